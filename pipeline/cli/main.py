"""The ``photogpt-pipeline`` command line: parse arguments, call the package, map errors to exit codes.

Exit codes (documented in README.md):

====  =====================================================================
0     everything asked for is done
1     finished, but some work failed (details in the summary)
2     bad usage, settings or manifest: nothing was sent
3     the API refused the key, or the preflight ping failed
5     the account is out of credits or quota: submissions stopped
130   interrupted (Ctrl-C); the state is saved and a rerun resumes
====  =====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pipeline import logs
from pipeline.cli import collector, outputs, run_command
from pipeline.cli.flags import add_logging_flags
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    pass

__all__ = ["main"]

_log = structlog.get_logger("pipeline.cli.main")


def _build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; with ``command="run"``, the run's alone. argparse builds each
    sub-parser eagerly (~0.4 ms apiece, most of it looking up translations), and a run needs
    none of the other ~28: ~10 ms of its start-up. A known command parses and reports errors
    exactly as in the full parser; anything else (help, a typo) gets the full one."""
    parser = argparse.ArgumentParser(
        prog="photogpt-pipeline",
        description="Turn a YAML manifest into PhotoGPT images and videos: rate-limited, resumable, "
        "never paying twice.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command == "run":
        _COMMANDS.update(run_command.register(sub))
        return parser

    sb = sub.add_parser("sandbox", help="serve the embedded PhotoGPT API simulator")
    sb.add_argument("--host", default="127.0.0.1")
    sb.add_argument("--port", type=int, default=8787, help="0 picks a free port (printed)")
    sb.add_argument("--key", action="append", default=[], help="an API key to accept (repeatable)")
    sb.add_argument("--profile", choices=("fast", "realistic", "chaos"), default="fast")
    sb.add_argument("--seed", type=int, default=None, help="seed for timings and faults")
    add_logging_flags(sb)

    ping = sub.add_parser("ping", help="check the base URL and the key (GET /ping, GET /models)")
    ping.add_argument("--key-file", type=Path, default=None, help="file holding the API key (mode 600)")
    add_logging_flags(ping)

    _COMMANDS.update(run_command.register(sub))
    # The other commands' modules: only for their parsers (a run imports none of them).
    from pipeline.cli import api_commands as apicli
    from pipeline.cli import inspect_commands
    from pipeline.cli import review as review_cli

    _COMMANDS.update(inspect_commands.register(sub))
    _COMMANDS.update(apicli.register(sub))
    _COMMANDS.update(review_cli.register(sub))
    _COMMANDS.update(outputs.register(sub))
    return parser


def _sandbox_keys(args: argparse.Namespace) -> tuple[tuple[str, ...], str]:
    """The keys the sandbox accepts, and how to describe them without printing a real key."""
    if args.key:
        return tuple(args.key), f"{len(args.key)} key(s) from --key"
    env_key = os.environ.get("PHOTOGPT_API_KEY", "").strip()
    if env_key:
        return (env_key,), "the key in PHOTOGPT_API_KEY"
    return ("sandbox",), "'sandbox' (export PHOTOGPT_API_KEY=sandbox)"


async def _cmd_sandbox(args: argparse.Namespace) -> int:
    from pipeline.simulator import SimConfig, serve

    keys, described = _sandbox_keys(args)
    overrides: dict[str, object] = {"keys": keys}
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = SimConfig.profile(args.profile, **overrides)

    def announce(origin: str) -> None:
        print(
            f"PhotoGPT sandbox ({args.profile}) on {origin}/api\n"
            f"  accepts {described}\n"
            f"  export PHOTOGPT_BASE_URL={origin}/api\n"
            f"  ledger: {origin}/_sim/stats   (Ctrl-C stops)",
            flush=True,
        )

    await serve(config, args.host, args.port, announce)
    return 0


async def _cmd_ping(args: argparse.Namespace) -> int:
    from pipeline.api.client import ApiClient
    from pipeline.api.config import ApiConfig

    config = ApiConfig.from_env(key_file=args.key_file)
    async with ApiClient(config) as api:
        await api.ping()
        models = await api.list_models()
    print(f"pong: {config.base_url} answers and accepts the key ({len(models)} trained model(s))")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "sandbox": _cmd_sandbox,
    "ping": _cmd_ping,
}


def _default_level(args: argparse.Namespace) -> str:
    """The live progress display already tells what info lines would; keep the screen for it."""
    progress = (
        args.command == "run" and not args.no_progress and args.log_file is None and sys.stderr.isatty()
    )
    return "warning" if progress else "info"


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (``PHOTOGPT_EVENT_LOOP=asyncio`` opts out), else asyncio's own.

    Why: a run is thousands of small requests, timers and thread hand-offs; the loop's own Python
    (``_run_once``, handles, selector transports) was about 15 % of the client's CPU in a 400-unit
    profile, and uvloop does that work in C (7-11 % less CPU per unit in A/B runs). Nothing depends
    on it: the code runs the same on the plain loop, which the tests use.
    """
    if os.environ.get("PHOTOGPT_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status.

    Called as the command (no ``argv``), the process ends here once stdout and stderr are flushed:
    every state and output file is closed by then, and the interpreter's orderly teardown of a
    few hundred modules added ~0.1-0.15 s to every run's wall time for nothing it keeps."""
    code = _main(argv)
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    if argv is None:  # this process's own command line: no collection while it imports
        collector.pause()
    given = sys.argv[1:] if argv is None else list(argv)
    args = _build_parser(given[0] if given else None).parse_args(given)
    if args.command != "run":  # run resumes it once the engine is imported (run_command.py)
        collector.settled()
    level = "error" if getattr(args, "quiet", False) else args.log_level or _default_level(args)
    log_file = args.log_file.open("a", encoding="utf-8") if args.log_file else None
    # Called with no argv: the command itself, which configures logging once (tests pass argv).
    logs.configure(fmt=args.log_format, level=level, stream=log_file, cache=argv is None)
    try:
        command = _COMMANDS[args.command]
        if inspect.iscoroutinefunction(command):
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                return int(runner.run(command(args)))
        return int(command(args))
    except PipelineError as exc:
        print(f"photogpt-pipeline: error: {logs.redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("photogpt-pipeline: interrupted", file=sys.stderr)
        return 130
    finally:
        if log_file is not None:
            log_file.close()
