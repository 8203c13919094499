"""``models``, ``images``, ``videos`` and ``jobs``: one CLI command per Developer API call.

:func:`register` adds the command groups to the top-level subparsers and returns
``{"models list": handler, ...}``; each leaf parser sets ``command`` to that key,
so ``cli.main`` dispatches them like any other command. Handlers are coroutine
functions returning an exit code; API failures leave as :mod:`pipeline.errors`.

Output (:mod:`pipeline.cli.display`): a table, ``field  value`` lines or ``--json`` on stdout;
progress notes on stderr. The key is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from pipeline.cli.display import emit, note
from pipeline.cli.flags import add_logging_flags
from pipeline.errors import ApiError, ConfigError, DownloadError, UnsafeAssetError

if TYPE_CHECKING:
    from pipeline.api.client import ApiClient

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], Any]

_TRAIN_DONE = frozenset({"ready", "failed", "deleted"})
_DOWNLOAD_WAIT_S = 600.0  # bound on waiting for the server to prepare an MP4
_DOWNLOAD_FIRST_DELAY_S = 0.25
_DOWNLOAD_MAX_DELAY_S = 5.0
_DURATION = re.compile(r"(\d+)([smhdw])")
_MAX_WINDOW = timedelta(days=7)  # the API refuses a longer /jobs window
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MODEL_COLUMNS = (("id", "id"), ("status", "status"), ("name", "name"), ("created", "created_at"))
_VIDEO_COLUMNS = (("id", "id"), ("job", "job_id"), ("model", "model_id"), ("created", "created_at"))
_JOB_COLUMNS = (("id", "job_id"), ("status", "status"), ("created", "created_at"), ("error", "error_message"))


# ---- plumbing -------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> ApiClient:
    """The one way handlers reach the API: ``--base-url`` over ``$PHOTOGPT_BASE_URL``, ``--key-file``.

    The client (and aiohttp under it) is imported here, not at the top: building the command
    line must not cost every other command, ``run`` included, these imports."""
    from pipeline.api.client import ApiClient
    from pipeline.api.config import ApiConfig

    env = dict(os.environ)
    if args.base_url:
        env["PHOTOGPT_BASE_URL"] = args.base_url
    return ApiClient(ApiConfig.from_env(env, key_file=args.key_file))


def _shower(get: str) -> Handler:
    """A ``show ID`` handler printing what the client's method named ``get`` returns."""

    async def show(args: argparse.Namespace) -> int:
        async with _client(args) as api:
            method: Callable[[str], Awaitable[Any]] = getattr(api, get)
            emit(args, await method(args.id))
        return 0

    return show


def _deleter(delete: str, kind: str) -> Handler:
    """A ``delete ID`` handler calling the client's method named ``delete``."""

    async def remove(args: argparse.Namespace) -> int:
        async with _client(args) as api:
            method: Callable[[str], Awaitable[Any]] = getattr(api, delete)
            await method(args.id)
        if args.json:
            emit(args, {"id": args.id, "deleted": True})
        else:
            print(f"deleted {kind} {args.id}")
        return 0

    return remove


# ---- models ---------------------------------------------------------------------------------


async def _models_list(args: argparse.Namespace) -> int:
    async with _client(args) as api:
        emit(args, await api.list_models(), _MODEL_COLUMNS)
    return 0


async def _models_create(args: argparse.Namespace) -> int:
    async with _client(args) as api:
        fields = {k: getattr(args, k) for k in ("name", "age", "gender", "ethnicity", "eye_color")}
        model = await api.save_model(**fields)
    emit(args, model)
    return 0


async def _models_train(args: argparse.Namespace) -> int:
    if not args.poll_interval > 0 or args.timeout < 0:
        raise ConfigError("--poll-interval must be positive and --timeout not negative")
    loop = asyncio.get_running_loop()
    async with _client(args) as api:
        note(f"model {args.id}: {await api.train_model(args.id)}")
        deadline = loop.time() + args.timeout
        model = await api.get_model(args.id)
        seen = model.status
        while not args.no_wait and model.status not in _TRAIN_DONE:
            left = deadline - loop.time()
            if left <= 0:
                emit(args, model)
                note(
                    f"model {args.id}: still {model.status} after {args.timeout:g}s; training continues "
                    f"server-side (check later: models show {args.id})"
                )
                return 1
            await asyncio.sleep(min(args.poll_interval, left))
            try:
                model = await api.get_model(args.id)
            except ApiError as exc:
                if not exc.retryable:
                    raise
                note(f"model {args.id}: poll failed ({exc}); trying again")
            if model.status != seen:
                seen = model.status
                note(f"model {args.id}: {seen}")
    emit(args, model)
    if model.status in ("failed", "deleted"):
        note(f"model {args.id}: training did not finish: the model is {model.status}")
        return 1
    return 0


# ---- images ---------------------------------------------------------------------------------


async def _images_upload(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    async with _client(args) as api:
        image = await api.upload_image(
            model_id=args.model, image_type=args.type, data=data, filename=path.name
        )
    emit(args, image)
    return 0


# ---- videos ---------------------------------------------------------------------------------


async def _videos_list(args: argparse.Namespace) -> int:
    if args.page < 1 or args.page_size < 1:
        raise ConfigError("--page and --page-size must be at least 1")
    async with _client(args) as api:
        page = await api.list_videos(page=args.page, page_size=args.page_size)
    if args.json:
        emit(args, page)
    else:
        emit(args, page.videos, _VIDEO_COLUMNS)
    return 0


def _download_target(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out).absolute()
    name = f"{args.id}.mp4"
    if PurePath(name).name != name or name.startswith("."):
        raise ConfigError(f"video id {args.id!r} is not a safe file name; give --out FILE")
    return Path.cwd() / name


async def _prepared_url(api: ApiClient, video_id: str) -> str:
    """Ask for the MP4 and poll until the server has it ready (short, growing delays; bounded)."""
    await api.create_video_download(video_id)
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + _DOWNLOAD_WAIT_S, _DOWNLOAD_FIRST_DELAY_S
    while True:
        progress = await api.get_video_download(video_id)
        if progress.is_ready and progress.url:
            return progress.url
        if progress.status in ("failed", "error"):
            raise DownloadError(f"video {video_id}: the server could not prepare the MP4 ({progress.status})")
        if loop.time() + delay > deadline:
            raise DownloadError(f"video {video_id}: the MP4 was not ready after {_DOWNLOAD_WAIT_S:g}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, _DOWNLOAD_MAX_DELAY_S)


async def _videos_download(args: argparse.Namespace) -> int:
    out = _download_target(args)
    async with _client(args) as api:
        url = await _prepared_url(api, args.id)
    part = out.with_name(out.name + ".part")
    import aiohttp

    from pipeline.output.downloader import Downloader

    # A session of its own: asset hosts never see the API key (the Downloader strips auth too).
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        downloader = Downloader(session, root=out.parent)
        fetched = await downloader.fetch(url, part)
        if fetched.kind != "mp4":
            await asyncio.to_thread(part.unlink, missing_ok=True)
            raise UnsafeAssetError(f"video {args.id}: the download is a {fetched.kind}, not an MP4")
        await downloader.publish(fetched, out)
    result = {"id": args.id, "path": str(out), "bytes": fetched.bytes, "sha256": fetched.sha256}
    if args.json:
        emit(args, result)
    else:
        print(f"{out} ({fetched.bytes} bytes)")
    return 0


# ---- jobs -----------------------------------------------------------------------------------


def _duration(text: str) -> timedelta:
    """``90m``, ``24h``, ``7d``, ``1h30m`` as a timedelta (argparse ``type``)."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90m, 24h or 7d")
    return timedelta(seconds=sum(int(n) * _UNIT_S[u] for n, u in parts))


async def _jobs_list(args: argparse.Namespace) -> int:
    if args.since is not None and args.since > _MAX_WINDOW:
        raise ConfigError("--since may be at most 7d: the API lists at most 7 days of jobs")
    end = datetime.now(UTC)
    start = end - args.since if args.since is not None else None
    stop = end if start is not None else None
    async with _client(args) as api:
        if args.all_pages:
            jobs = [job async for job in api.iter_jobs(start=start, end=stop)]
            token = None
        else:
            page = await api.list_jobs(start=start, end=stop)
            jobs, token = list(page.jobs), page.next_page_token
    if args.json:
        emit(args, {"jobs": jobs, "next_page_token": token})
    else:
        emit(args, jobs, _JOB_COLUMNS)
        if token:
            note("more jobs on later pages: add --all-pages")
    return 0


# ---- parser ---------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    """Flags every API command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--key-file", type=Path, default=None, help="file holding the API key (mode 600)")
    p.add_argument("--base-url", default=None, help="API base URL (default $PHOTOGPT_BASE_URL)")
    p.add_argument("--json", action="store_true", help="machine-readable output (snake_case fields)")
    add_logging_flags(p)
    return p


class _Tree:
    """The command groups as they are built: the flags every leaf shares and the handler table."""

    def __init__(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self.sub, self.common = sub, _common()
        self.table: dict[str, Handler] = {}

    def group(self, name: str, help_: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        parser = self.sub.add_parser(name, help=help_)
        return parser.add_subparsers(dest=f"{name}_action", required=True, metavar="ACTION")

    def leaf(
        self,
        actions: argparse._SubParsersAction[argparse.ArgumentParser],
        key: str,
        handler: Handler,
        help_: str,
        *positional: str,
    ) -> argparse.ArgumentParser:
        parser = actions.add_parser(key.split()[1], help=help_, parents=[self.common])
        parser.set_defaults(command=key)
        for name in positional:
            parser.add_argument(name)
        self.table[key] = handler
        return parser


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add the models/images/videos/jobs groups to ``sub``; return ``{"models list": handler, ...}``.

    Each leaf sets ``command`` to its key, so a dispatcher that looks up ``args.command`` finds it.
    """
    tree = _Tree(sub)
    group, leaf = tree.group, tree.leaf

    models = group("models", "trained models: list, show, create, train, delete")
    leaf(models, "models list", _models_list, "your models")
    leaf(models, "models show", _shower("get_model"), "one model", "id")
    create = leaf(models, "models create", _models_create, "create a model (then upload 12+ photos)")
    create.add_argument("--name", required=True)
    create.add_argument("--age", type=float, default=None)
    for flag in ("--gender", "--ethnicity", "--eye-color"):
        create.add_argument(flag, default=None)
    train = leaf(models, "models train", _models_train, "train; wait for ready unless --no-wait", "id")
    train.add_argument("--no-wait", action="store_true", help="trigger and return")
    train.add_argument("--poll-interval", type=float, default=300.0, metavar="SECONDS")
    train.add_argument("--timeout", type=float, default=2700.0, metavar="SECONDS")
    leaf(models, "models delete", _deleter("delete_model", "model"), "delete a model", "id")

    images = group("images", "image assets: upload, show, delete")
    upload = leaf(images, "images upload", _images_upload, "upload a training or reference image")
    upload.add_argument("file", type=Path)
    upload.add_argument("--type", required=True, choices=("modelInput", "auxiliaryType"))
    upload.add_argument("--model", default=None, help="model id (required for modelInput)")
    leaf(images, "images show", _shower("get_image"), "one image", "id")
    leaf(images, "images delete", _deleter("delete_image", "image"), "delete an image", "id")

    videos = group("videos", "video assets: list, show, delete, download")
    vlist = leaf(videos, "videos list", _videos_list, "one page of your videos")
    vlist.add_argument("--page", type=int, default=1)
    vlist.add_argument("--page-size", type=int, default=20)
    leaf(videos, "videos show", _shower("get_video"), "one video", "id")
    leaf(videos, "videos delete", _deleter("delete_video", "video"), "delete a video", "id")
    download = leaf(videos, "videos download", _videos_download, "fetch the MP4 (verified, atomic)", "id")
    download.add_argument("--out", type=Path, default=None, help="target file (default ./<ID>.mp4)")

    jobs = group("jobs", "API jobs: list, show")
    jlist = leaf(jobs, "jobs list", _jobs_list, "recent jobs (server default: the last 24 h)")
    jlist.add_argument("--since", type=_duration, default=None, metavar="DURATION", help="e.g. 90m, 24h, 7d")
    jlist.add_argument("--all-pages", action="store_true", help="follow nextPageToken to the end")
    leaf(jobs, "jobs show", _shower("get_job"), "one job: status, outputs or error", "id")
    return tree.table
