"""Command line: flags and a config file into one Config, then run. Nothing else."""

import argparse
import errno
import sys

from . import __version__
from .config import ConfigError, load


def _parser():
    p = argparse.ArgumentParser(
        prog="fleetproxy",
        description="L7 gateway for fleets of vLLM / OpenAI-compatible servers. "
        "`fleetproxy demo` starts a demo fleet of simulated vLLM servers behind the proxy.",
    )
    p.add_argument("--version", action="store_true", help="print version and speedups in use, then exit")
    p.add_argument("--config", metavar="FILE", help="YAML or TOML config file; flags override it")
    p.add_argument("--listen", metavar="HOST:PORT", help="data listener (default 127.0.0.1:8080)")
    p.add_argument("--admin-listen", metavar="HOST:PORT", help="admin listener (default 127.0.0.1:9090)")
    p.add_argument("--backend", metavar="URL", action="append", help="backend base URL, repeatable")
    p.add_argument("--workers", metavar="N|auto", help="worker processes (default 1; auto = usable CPUs)")
    p.add_argument(
        "--single-process", action="store_true", help="serve in this process, without a supervisor"
    )
    p.add_argument("--drain-timeout", type=float, metavar="S", help="graceful drain limit (default 30)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", default=None, help="log one line per request")
    b = p.add_argument_group("balancing (the default cluster; clusters: in the config file for more)")
    b.add_argument("--policy", dest="b_policy", choices=["cache_aware", "consistent_hash", "least_request", "round_robin"])
    b.add_argument(
        "--hash-key", dest="b_hash_keys", action="append", metavar="KEY",
        help="consistent_hash key source, repeatable, tried in order: header:NAME, user, prefix",
    )
    b.add_argument("--load-factor", dest="b_load_factor", type=float, metavar="C", help="bounded loads: c x mean")
    t = p.add_argument_group("timeouts (seconds)")
    t.add_argument("--connect-timeout", type=float, dest="t_connect")
    t.add_argument("--first-byte-timeout", type=float, dest="t_first_byte")
    t.add_argument("--idle-timeout", type=float, dest="t_idle", help="inter-token silence upstream")
    t.add_argument("--header-timeout", type=float, dest="t_header_read")
    t.add_argument("--request-timeout", type=float, dest="t_request_read")
    t.add_argument("--keepalive-timeout", type=float, dest="t_keepalive")
    t.add_argument("--pool-idle-timeout", type=float, dest="t_pool_idle")
    t.add_argument(
        "--write-stall-timeout", type=float, dest="t_write_stall", help="a client that reads nothing this long is cut off"
    )
    t.add_argument(
        "--pool-wait-timeout", type=float, dest="t_pool_wait", help="wait for an upstream connection at most (then 503)"
    )
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-body-bytes", type=int, dest="l_max_body_bytes", help="request body (default 8 MiB)")
    lim.add_argument("--max-header-bytes", type=int, dest="l_max_header_bytes")
    lim.add_argument("--max-headers", type=int, dest="l_max_headers")
    lim.add_argument("--max-connections-per-backend", type=int, dest="p_max_connections")
    lim.add_argument("--max-pool-waiters", type=int, dest="p_max_waiters", help="per backend, then 503")
    lim.add_argument(
        "--pool-spare", type=int, dest="p_spare", help="idle upstream connections opened ahead of demand (0: none)"
    )
    lim.add_argument("--max-connections", type=int, dest="l_max_connections", help="client connections per worker")
    lim.add_argument(
        "--max-queued-bytes", type=int, dest="l_max_queued_bytes", help="pipelined request bytes per connection"
    )
    lim.add_argument(
        "--max-worker-queued-bytes", type=int, dest="l_max_worker_queued_bytes", help="the same per worker"
    )
    return p


def config_from_args(args):
    overrides = {"timeouts": {}, "limits": {}, "connection_pool": {}, "balance": {}}
    for key, value in vars(args).items():
        if value is None:
            continue
        if key.startswith("t_"):
            overrides["timeouts"][key[2:]] = value
        elif key.startswith("l_"):
            overrides["limits"][key[2:]] = value
        elif key.startswith("p_"):
            overrides["connection_pool"][key[2:]] = value
        elif key.startswith("b_"):
            overrides["balance"][key[2:]] = value
        elif key == "backend":
            overrides["backends"] = value
        elif key == "workers":
            overrides[key] = value if value == "auto" else _int(value, "--workers")
        elif key in ("listen", "admin_listen", "log_level", "access_log", "drain_timeout"):
            overrides[key] = value
    return load(args.config, {k: v for k, v in overrides.items() if v != {}})


def _int(value, flag):
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"<command line>: {flag} must be an integer or auto, not {value!r}") from None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main

        return demo_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.version:
        from _speedups import IMPLEMENTATION

        from .process.worker import loop_build

        print(f"fleetproxy {__version__} (speedups: {IMPLEMENTATION}) on {loop_build()}")
        return 0
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"fleetproxy: config error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.single_process:
            from .process.worker import run

            run(cfg)
            return 0
        _asyncio_without_ssl()
        from .process.supervisor import run

        return run(cfg, lambda: config_from_args(args))
    except OSError as exc:
        if exc.errno not in _CANNOT_LISTEN:
            raise
        print(f"fleetproxy: cannot listen: {exc}", file=sys.stderr)
        return 1


# What a bind reports when the address is the problem (taken, not ours, needs privilege).
_CANNOT_LISTEN = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def _asyncio_without_ssl():
    """Import asyncio as if ssl were missing, in a process about to become the supervisor.

    Why: asyncio imports ssl wherever it can (``try: import ssl``), and ssl is ~1.4 MiB of the
    supervisor's RSS (libssl and the module) for connections it never makes: its admin listener
    and its fan-out to the workers' admin ports are plain HTTP, and discovery, health checks and
    every upstream connection run in the workers, which import asyncio normally (they are
    started with exec, not forked from here). asyncio takes ssl as missing only for its own TLS
    paths (a TLS connection would raise "stdlib ssl module not available"). ``ssl`` itself stays
    importable: a reload's config check still loads a ``ca_file`` with it.
    """
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return  # too late to matter (run in-process by a test), or a ca_file loaded it already
    sys.modules["ssl"] = None  # makes `import ssl` raise ImportError
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]
