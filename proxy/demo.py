"""`fleetproxy demo`: two simulated vLLM servers behind the proxy, one example request, and
copy-paste commands; everything runs in this one process until Ctrl-C."""

import argparse
import asyncio
import logging

import uvloop

from .config import build
from .sim import SimConfig, start_sim
from .process.worker import serve

BODY = b'{"model":"tiny","messages":[{"role":"user","content":"Hello, fleet!"}],"max_tokens":8}'


async def _example(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: demo\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(BODY), BODY)
    )
    response = await reader.read()
    writer.close()
    return response.decode(errors="replace")


async def _demo(args):
    sims = [
        await start_sim(SimConfig(port=args.sim_port + i, ttft=0.05, itl=0.02, name=f"sim-{i}"))
        for i in range(2)
    ]
    cfg = build(
        {
            "listen": f"127.0.0.1:{args.port}",
            "admin_listen": f"127.0.0.1:{args.admin_port}",
            "backends": [s.url for s in sims],
        },
        "demo",
    )
    listening = asyncio.Event()
    server = asyncio.get_running_loop().create_task(serve(cfg, started=lambda ctx, admin_port: listening.set()))
    await listening.wait()
    url = f"http://127.0.0.1:{args.port}"
    print(f"\nfleetproxy demo: proxy {url} -> backends {', '.join(s.url for s in sims)}")
    print(f"admin: http://127.0.0.1:{args.admin_port}/admin/backends\n")
    print("example request through the proxy:\n")
    print(await _example(args.port))
    print(
        f"""
try it yourself:

  curl -N {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model":"tiny","messages":[{{"role":"user","content":"hi"}}],"max_tokens":16,"stream":true}}'

  python -c 'import openai; c = openai.OpenAI(base_url="{url}/v1", api_key="none")
  for e in c.chat.completions.create(model="tiny", messages=[{{"role":"user","content":"hi"}}], stream=True):
      print(e.choices[0].delta.content or "", end="", flush=True)'
""",
        flush=True,
    )
    if args.once:
        server.cancel()
    else:
        print("Ctrl-C stops the demo.", flush=True)
        try:
            await server
        except asyncio.CancelledError:
            pass
    for sim in sims:
        await sim.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog="fleetproxy demo", description=__doc__)
    p.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    p.add_argument("--admin-port", type=int, default=9090)
    p.add_argument("--sim-port", type=int, default=8001, help="first simulator port (two are used)")
    p.add_argument("--once", action="store_true", help="exit after the example request")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        uvloop.run(_demo(args))
    except KeyboardInterrupt:
        pass
    return 0
