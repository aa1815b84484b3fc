"""The `crucible` command line: serve one service, bring the mesh up, check health, prepare models, run the demo.

Each subcommand is a thin shell over library code so tests and notebooks can call the same functions.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from crucible.clients.channel import ChannelConfig, add_connection_arguments, cli_channel_config, open_channel
from crucible.clients.health import HealthResult
from crucible.clients.tables import format_table
from crucible.mesh import SERVICES, MeshLauncher, default_ports, health_table
from crucible.runtime.config import add_arguments, load_config
from crucible.runtime.errors import ConfigError
from crucible.runtime.logs import QUIET_ENV, JsonLinesStream, configure_logging
from crucible.version import __version__

log = logging.getLogger(__name__)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crucible", description="Crucible: a gRPC mesh for LLM red-teaming and reward-driven RL."
    )
    parser.add_argument("--version", action="version", version=f"crucible {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run one service in the foreground (SIGTERM/SIGINT stop it gracefully)")
    serve_sub = serve.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for name, entry in SERVICES.items():
        config_cls, _ = entry.load_config_only()
        p = serve_sub.add_parser(
            name, help=f"{entry.proto_service} (default port {entry.port})", description=(config_cls.__doc__ or "").strip()
        )
        add_arguments(p, config_cls)

    def mesh_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1", help="address every service binds to (default 127.0.0.1)")
        p.add_argument(
            "--base-port",
            type=int,
            default=None,
            help="put the services on BASE, BASE+1, ... (default: "
            + ", ".join(f"{n} {e.port}" for n, e in SERVICES.items())
            + "); metrics on each port + 1000",
        )
        p.add_argument("--services", default=",".join(SERVICES), help="comma-separated subset to run (default: all five)")
        p.add_argument("--log-dir", type=Path, default=None, help="write each service's log to DIR/NAME.log")
        p.add_argument(
            "--startup-timeout",
            type=float,
            default=600.0,
            help="seconds to wait for every service to be SERVING (default 600: a 2-core machine busy with other work "
            "took over 180 s from a fresh cache)",
        )
        p.add_argument("--no-console", action="store_true", help="do not start the web console")
        p.add_argument(
            "--console-port", type=int, default=8080, help="port of the web console (default 8080; a free one when 8080 is taken)"
        )

    up = sub.add_parser("up", help="run the five services on one host until Ctrl-C")
    mesh_args(up)
    demo = sub.add_parser("demo", help="start the mesh, show what it does, stop it cleanly")
    mesh_args(demo)

    health = sub.add_parser(
        "health",
        help="check the health of running services; exit 1 unless all are SERVING",
        description="Addresses come from --host/--base-port when given, else from the client "
        "config (CRUCIBLE_<SERVICE>_ADDRESS, CRUCIBLE_CLIENT_CONFIG), else the default ports.",
    )
    health.add_argument("--host", default=None, help="host of every service (default 127.0.0.1 with --base-port)")
    health.add_argument("--base-port", type=int, default=None)
    health.add_argument("--services", default=",".join(SERVICES))
    health.add_argument("--timeout", type=float, default=2.0, help="deadline of each check in seconds")
    health.add_argument("--json", action="store_true", help="one JSON object per service, a line each")
    add_connection_arguments(health, address=False, timeout=False)

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or tcsh)",
        description="Static completion script generated from this command line (shtab); it "
        "needs no network and no Python at completion time. bash: "
        "`crucible completion bash > ~/.local/share/bash-completion/completions/crucible`; "
        'zsh: `crucible completion zsh > "${fpath[1]}/_crucible"`.',
    )
    completion.add_argument("shell", choices=("bash", "zsh", "tcsh"))

    models = sub.add_parser("models", help="manage the embedded models")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    prep = models_sub.add_parser(
        "prepare", help="convert the packaged SmolLM2 GGUF once into a cached Hugging Face folder and locate MiniLM"
    )
    prep.add_argument("--cache-dir", type=Path, default=None, help="default: $CRUCIBLE_CACHE_DIR or ~/.cache/crucible")
    prep.add_argument("--json", action="store_true", help="one JSON object per model, a line each")

    # Service-specific commands (e.g. `crucible detect`, `crucible cost ...`, `crucible jobs ...`) live beside each
    # service in crucible/<svc>/cli.py, and the SDK's (`crucible reward`, `crucible attack`) in crucible/clients/cli.py:
    # `add_commands(subparsers)` adds parsers that set_defaults(handler=fn),
    # where fn(args) -> exit code.
    for module_name in [*(f"crucible.{name}.cli" for name in SERVICES), "crucible.clients.cli", "crucible.console.cli"]:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).add_commands(sub)
    return parser


def _selected(value: str) -> list[str]:
    names = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise SystemExit(f"crucible: unknown service(s): {', '.join(unknown)} (choose from {', '.join(SERVICES)})")
    return names


def _serve(args: argparse.Namespace) -> int:
    entry = SERVICES[args.service]
    config_cls, create_server = entry.load()
    try:
        config = load_config(config_cls, args.service, args=args)
    except ConfigError as err:
        print(f"crucible serve {args.service}: invalid setting {err}", file=sys.stderr)
        return 2
    if config.log_format == "json":  # every line of a service's log is JSON, whatever a library prints
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        sys.stderr = JsonLinesStream(sys.stderr, args.service)
    configure_logging(args.service, config.log_level, config.log_format)
    log.info("starting %s", args.service, extra={"config": config.public_dict(), "version": __version__})

    async def run() -> int:
        server, _port = create_server(config)
        return await server.serve()

    try:
        return asyncio.run(run())
    except ConfigError as err:  # a state file or data file refused at start: the message names it, no traceback
        log.error("crucible serve %s: %s", args.service, err)
        print(f"crucible serve {args.service}: {err}", file=sys.stderr)
        return 2


async def _bring_up(
    args: argparse.Namespace, extra_args: dict[str, list[str]] | None = None
) -> tuple[MeshLauncher, dict[str, object]]:
    mesh = MeshLauncher(
        _selected(args.services),
        host=args.host,
        ports=default_ports(args.base_port),
        log_dir=args.log_dir,
        extra_args=extra_args,
    )
    started = time.perf_counter()
    mesh.start()
    where = f"; logs in {args.log_dir}" if args.log_dir else ""
    shared = "; forked from one process that imports torch and transformers once" if mesh.fork_server else ""
    slowest = f"models load first: the detector, proposer and scorer take longest{shared}"
    print(f"starting {', '.join(mesh.services)} ({slowest}){where}", flush=True)

    def ready(name: str, result: HealthResult, seconds: float) -> None:
        print(f"  {name:<9} ready in {seconds:5.1f}s  {mesh.address(name)}", flush=True)

    try:
        results = await mesh.wait_ready(timeout=args.startup_timeout, on_ready=ready)
    except BaseException:
        mesh.stop()
        raise
    print(f"mesh ready in {time.perf_counter() - started:.1f}s", flush=True)
    print(health_table(mesh, results), flush=True)
    return mesh, dict(results)


async def _start_console(args: argparse.Namespace, mesh: MeshLauncher) -> Any:
    """The web console as a child process pointed at this mesh (None with --no-console or when it fails to start)."""
    if args.no_console:
        return None
    from crucible.console.cli import ConsoleProcess, port_or_free

    console = ConsoleProcess(
        args.host, port_or_free(args.host, args.console_port), {n: mesh.address(n) for n in mesh.services}, args.log_dir
    )
    console.start()
    try:
        await console.wait_ready()
    except (RuntimeError, TimeoutError) as err:
        print(f"crucible {args.command}: web console not started: {err}", file=sys.stderr)
        console.stop()
        return None
    print(f"console: {console.url}", flush=True)
    return console


def _up(args: argparse.Namespace) -> int:
    async def run() -> int:
        try:
            mesh, _ = await _bring_up(args)
        except (RuntimeError, TimeoutError) as err:
            print(f"crucible up: {err}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        console = await _start_console(args, mesh)
        print("serving; Ctrl-C stops every service gracefully", flush=True)
        exited: dict[str, int] = {}
        while not stop.is_set() and not exited:
            exited = {n: p.returncode for n, p in mesh.processes.items() if p.poll() is not None}
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                pass
        if exited:
            print(f"crucible up: service(s) exited: {exited}; stopping the rest", file=sys.stderr)
        if console is not None:
            console.stop()
        codes = mesh.stop()
        print("stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()), flush=True)
        return 1 if exited else 0

    return asyncio.run(run())


def _demo(args: argparse.Namespace) -> int:
    from crucible.clients.mesh import Mesh
    from crucible.demo import demo_ok, print_summary, run_demo

    if args.log_dir is None:
        args.log_dir = Path(tempfile.mkdtemp(prefix="crucible-demo-"))
    # The demo's jobs, budgets and spend live in its own folder, never in the user's real state (`jobs list` later).
    state = args.log_dir / "state"
    own_state = {name: ["--state-dir", str(state / name)] for name in ("scheduler", "cost")}

    async def run() -> int:
        print(
            f"Crucible {__version__} demo: starting the mesh (logs and traces in {args.log_dir}; its own state in {state})",
            flush=True,
        )
        try:
            mesh, _ = await _bring_up(args, own_state)
        except (RuntimeError, TimeoutError) as err:
            print(f"crucible demo: {err}", file=sys.stderr)
            return 1
        console = await _start_console(args, mesh)
        if console is not None:
            os.environ["CRUCIBLE_CONSOLE_URL"] = console.url  # the demo prints where to watch its job
        try:
            async with Mesh.local(args.base_port) as clients:
                results = await run_demo(clients, args.log_dir)
            health = await mesh.health()
            results["services_serving_after_demo"] = f"{sum(r.serving for r in health.values())}/{len(health)}"
            ok = demo_ok(results) and all(r.serving for r in health.values())
        finally:
            if console is not None:
                console.stop()
            codes = mesh.stop()
        clean = all(c == 0 for c in codes.values())
        results["shutdown"] = "clean (every service exited 0 after SIGTERM)" if clean else f"unclean: {codes}"
        print_summary(results)
        print(f"demo {'finished' if ok and clean else 'FAILED'}", flush=True)
        return 0 if ok and clean else 1

    return asyncio.run(run())


async def _check(config: ChannelConfig, timeout: float) -> HealthResult:
    """One grpc.health.v1 Check over a channel built from the SDK config (TLS, token); never raises."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    start = time.perf_counter()
    address = ",".join(config.addresses)
    try:
        async with open_channel(config, "grpc.health.v1.Health") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        status, detail = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), ""
    except grpc.aio.AioRpcError as err:
        unreachable = err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        status, detail = "UNREACHABLE" if unreachable else "ERROR", f"{err.code().name}: {err.details()}"
    except ValueError as err:  # an address the channel cannot use
        status, detail = "ERROR", str(err)
    return HealthResult(address, "", status, (time.perf_counter() - start) * 1000, detail)


def _health(args: argparse.Namespace) -> int:
    names = _selected(args.services)
    ports = default_ports(args.base_port)
    configs = {}
    try:
        for name in names:
            config = cli_channel_config(name, args)
            if args.host is not None or args.base_port is not None:
                config = dataclasses.replace(config, addresses=(f"{args.host or '127.0.0.1'}:{ports[name]}",))
            configs[name] = config
    except ValueError as err:
        print(f"crucible health: {err}", file=sys.stderr)
        return 2

    async def run() -> list[HealthResult]:
        return list(await asyncio.gather(*(_check(configs[n], args.timeout) for n in names)))

    results = dict(zip(names, asyncio.run(run()), strict=True))
    if args.json:
        for name, r in results.items():
            print(
                json.dumps(
                    {
                        "service": name,
                        "contract": SERVICES[name].proto_service,
                        "address": r.address,
                        "status": r.status,
                        "latency_ms": round(r.latency_ms, 3),
                        "detail": r.detail,
                    }
                )
            )
    else:
        rows = [(n, SERVICES[n].proto_service, r.address, r.status, f"{r.latency_ms:.1f}") for n, r in results.items()]
        print(format_table(("service", "contract", "address", "health", "ms"), rows))
        for name, r in results.items():
            if r.detail:
                print(f"{name}: {r.detail}", file=sys.stderr)
    return 0 if all(r.serving for r in results.values()) else 1


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    import shtab

    print(shtab.complete(parser, shell=shell), end="")
    return 0


def _models_prepare(args: argparse.Namespace) -> int:
    from crucible.models import ModelError, prepare_models

    try:
        # progress lines on stderr: stdout is the table, or JSON lines a script parses (`--json | jq`)
        prepared = prepare_models(args.cache_dir, log=lambda line: print(line, file=sys.stderr))
    except ModelError as err:
        print(f"crucible models prepare: {err}", file=sys.stderr)
        return 1
    from crucible.detector.kernel_cache import prepare_kernel
    from crucible.models.registry import KIND_CAUSAL_LM, MODEL_ALIASES

    # The detector's compiled statistics kernel for each packaged causal LM (one per vocabulary: the default
    # gemma-3-270m and the faster smollm2-135m-instruct), so a first start does not compile (issue 27).
    for p in prepared:
        if MODEL_ALIASES[p.alias].kind == KIND_CAUSAL_LM:
            prepare_kernel(args.cache_dir, p.path, log=lambda line: print(line, file=sys.stderr))
    if args.json:
        for p in prepared:
            print(
                json.dumps(
                    {
                        "model": p.alias,
                        "state": "created" if p.created else "present",
                        "revision": p.revision,
                        "path": str(p.path),
                        "license": MODEL_ALIASES[p.alias].license,
                    }
                )
            )
        return 0
    rows = [
        (p.alias, "created" if p.created else "present", p.revision, MODEL_ALIASES[p.alias].license, str(p.path))
        for p in prepared
    ]
    print(format_table(("model", "state", "revision", "license", "path"), rows))
    return 0


#: Exit status after stdout was closed early (`crucible jobs list | head -1`): 128 + SIGPIPE, what a program killed by
#: SIGPIPE reports, so `set -o pipefail` scripts see the same as with `cat` or `grep`; nothing is printed.
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Run one command; a reader that closed the pipe ends it quietly with EXIT_BROKEN_PIPE (see there)."""
    try:
        try:
            code = _main(argv)
        except SystemExit:  # --help, usage errors: their output too is flushed here
            sys.stdout.flush()
            raise
        except KeyboardInterrupt:
            return 130
        except (grpc.RpcError, OSError, ValueError) as err:
            if isinstance(err, BrokenPipeError) or os.environ.get("CRUCIBLE_DEBUG"):
                raise
            return _user_error(argv, err)
        sys.stdout.flush()  # a closed pipe must surface here, not in the interpreter's final flush
        return code
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not raise again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _user_error(argv: list[str] | None, err: BaseException) -> int:
    """The last net under every command: a failed call, a file that cannot be read, a value that cannot be used is
    reported in a sentence (no traceback; CRUCIBLE_DEBUG=1 shows one). Commands report their own errors first."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")][:2]
    command = "crucible " + " ".join(words[:1])
    if isinstance(err, grpc.RpcError):
        from crucible.clients.cli_common import report_rpc_error

        return report_rpc_error(err, command, "", "")
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        print(f"{command}: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    print(f"{command}: {err}", file=sys.stderr)
    return 2


def _main(argv: list[str] | None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is not None:
        return int(args.handler(args))
    if args.command == "completion":
        return _completion(parser, args.shell)
    if args.command == "serve":
        return _serve(args)
    if args.command == "up":
        return _up(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "health":
        return _health(args)
    if args.command == "models":
        return _models_prepare(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse makes this unreachable
