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
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from pipeline import logs
from pipeline.errors import PipelineError

__all__ = ["main"]

_log = structlog.get_logger("pipeline.cli")


def _add_logging_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="photogpt-pipeline",
        description="Turn a YAML manifest into PhotoGPT images and videos: rate-limited, resumable, "
        "never paying twice.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sb = sub.add_parser("sandbox", help="serve the embedded PhotoGPT API simulator")
    sb.add_argument("--host", default="127.0.0.1")
    sb.add_argument("--port", type=int, default=8787)
    sb.add_argument("--key", action="append", default=[], help="an API key to accept (repeatable)")
    sb.add_argument("--profile", choices=("fast", "realistic", "chaos"), default="fast")
    sb.add_argument("--seed", type=int, default=None, help="seed for timings and faults")
    _add_logging_flags(sb)

    ping = sub.add_parser("ping", help="check the base URL and the key (GET /ping, GET /models)")
    ping.add_argument("--key-file", type=Path, default=None, help="file holding the API key (mode 600)")
    _add_logging_flags(ping)

    demo = sub.add_parser("demo", help="generate two images against an in-process sandbox")
    demo.add_argument("--out", default="outputs/demo")
    _add_logging_flags(demo)
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
    print(
        f"PhotoGPT sandbox ({args.profile}) on http://{args.host}:{args.port}/api\n"
        f"  accepts {described}\n"
        f"  export PHOTOGPT_BASE_URL=http://{args.host}:{args.port}/api\n"
        f"  ledger: http://{args.host}:{args.port}/_sim/stats   (Ctrl-C stops)",
        flush=True,
    )
    await serve(config, args.host, args.port)
    return 0


async def _cmd_ping(args: argparse.Namespace) -> int:
    from pipeline.client import ApiClient
    from pipeline.config import ApiConfig

    config = ApiConfig.from_env(key_file=args.key_file)
    async with ApiClient(config) as api:
        await api.ping()
        models = await api.list_models()
    print(f"pong: {config.base_url} answers and accepts the key ({len(models)} trained model(s))")
    return 0


async def _cmd_demo(args: argparse.Namespace) -> int:
    """The seed request end to end against an in-process sandbox (until `run` lands)."""
    import aiohttp

    from pipeline.client import ApiClient
    from pipeline.config import ApiConfig, ApiKey
    from pipeline.simulator import Sandbox, SimConfig

    body = {
        "modelID": "gpt-image-2",
        "prompt": "A cinematic product photo of a silver perfume bottle",
        "aspectRatio": "1:1",
        "numImages": 2,
        "options": {"openai": {"imageSize": "1K", "outputFormat": "jpeg", "quality": "high"}},
    }
    import anyio

    out = anyio.Path(args.out)
    await out.mkdir(parents=True, exist_ok=True)
    async with Sandbox(SimConfig.profile("fast", keys=("sandbox",))) as sb:
        config = ApiConfig(base_url=sb.base_url, api_key=ApiKey("sandbox"))
        async with ApiClient(config) as api, aiohttp.ClientSession() as files:
            await api.ping()
            ticket = await api.generate_images(body)
            print(f"submitted job {ticket.job_id}")
            job = await api.get_job(ticket.job_id)
            while not job.is_terminal:
                await asyncio.sleep(0.2)
                job = await api.get_job(ticket.job_id)
            print(f"job {job.job_id}: {job.status}")
            for n, image in enumerate(job.images, 1):
                async with files.get(image.url) as resp:
                    data = await resp.read()
                path = out / f"image-{n}.jpeg"
                await path.write_bytes(data)
                print(f"  wrote {path} ({len(data)} bytes)")
    return 0 if job.status == "success" else 1


_COMMANDS = {"sandbox": _cmd_sandbox, "ping": _cmd_ping, "demo": _cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = _build_parser().parse_args(argv)
    logs.configure(fmt=args.log_format, level=args.log_level)
    try:
        return asyncio.run(_COMMANDS[args.command](args))
    except PipelineError as exc:
        print(f"photogpt-pipeline: error: {logs.redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("photogpt-pipeline: interrupted", file=sys.stderr)
        return 130
