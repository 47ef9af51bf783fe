"""What cache_aware costs per request, in one process: cutting a prompt into blocks, and the pick.

    python bench/micro/placement.py [--backends 1,4,16] [--prompt 1024] [--picks 20000] [ROOT ...]

Why. Nearly every real chat carries a system prompt of a block or more (256 bytes), and so is
placed by its prefix: the body walked for the prompt, the prompt hashed block by block, the
prefix table asked who holds it, the ring walked, the shares aged. Scenario a's prompt is
shorter than a block and takes the short path, so the end-to-end bench does not see this
(``bench/lua/chat_system.lua`` does). This builds a Router with ``--backends`` endpoints and the
default policy, decodes 256 chats of 8 system prompts of ``--prompt`` bytes (8 conversation
groups: most picks find the prefix where it was placed, as a fleet's traffic does), and times
``policy.blocks`` and ``policy.pick`` on them, best of 5. ROOT: another built checkout to time
in turn (``git worktree add DIR REV`` and ``setup.py build_ext --inplace`` there), each in a
process of its own.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

SENTENCE = "The fleet answers questions about the documents retrieved for this request. "


def measure(backends, prompt, picks):
    """{"blocks": µs, "pick": µs, "decisions": {...}} in this process's tree (``sys.path``)."""
    import gc
    import time

    import msgspec

    import _speedups
    from proxy.config import build
    from proxy.routing.fields import decode
    from proxy.routing.router import Router

    cfg = build({"backends": [f"http://127.0.0.1:{9 + i}" for i in range(backends)], "log_level": "warning"})
    router = Router(cfg, None)
    cluster = next(iter(router.clusters.values()))
    policy, snap = cluster.policy, cluster.snapshot
    system = SENTENCE * (prompt // len(SENTENCE) + 1)
    fields = [decode(msgspec.json.encode({"model": "m", "messages": [
        {"role": "system", "content": f"Group {k % 8}. " + system[:prompt]},
        {"role": "user", "content": f"question {k}"}]})) for k in range(256)]
    blocks = [policy.blocks(f) for f in fields]
    now = 100.0
    for i in range(2000):  # warm: the table, the groups, the counts
        policy.pick(snap, blocks[i & 255], None, 0, now + i * 1e-4)
    gc.collect()
    gc.freeze()

    def best(run, n):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            run(n)
            times.append(time.perf_counter() - t0)
        return min(times) / n * 1e6

    def pick(n):
        for i in range(n):
            policy.pick(snap, blocks[i & 255], None, 0, now + i * 1e-4)

    def cut(n):
        for i in range(n):
            policy.blocks(fields[i & 255])

    return {"implementation": _speedups.IMPLEMENTATION, "blocks": best(cut, picks // 4), "pick": best(pick, picks),
            "decisions": policy.decisions}


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench/micro/placement.py", description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="*", default=[ROOT], metavar="ROOT")
    p.add_argument("--backends", default="1,4,16", help="comma-separated cluster sizes")
    p.add_argument("--prompt", type=int, default=1024, help="bytes of system prompt")
    p.add_argument("--picks", type=int, default=20000)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.backends.split(",") if s]
    if args.child:
        sys.path.insert(0, args.roots[0])
        print(json.dumps({n: measure(n, args.prompt, args.picks) for n in sizes}))
        return 0
    print(f"cache_aware per request, a {args.prompt}-byte system prompt, in process (µs, best of 5)\n")
    print("| tree | build | backends | cut into blocks | pick | decisions |")
    print("|---|---|---|---|---|---|")
    for root in args.roots:
        root = os.path.abspath(root)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), root, "--child", "--backends", args.backends,
                              "--prompt", str(args.prompt), "--picks", str(args.picks)],
                             cwd=root, capture_output=True, text=True, check=True)
        for n, got in json.loads(out.stdout).items():
            decided = ", ".join(f"{k} {v}" for k, v in got["decisions"].items() if v)
            print(f"| {root} | {got['implementation']} | {n} | {got['blocks']:.2f} | {got['pick']:.2f} | {decided} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
