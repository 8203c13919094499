"""``photogpt-pipeline review``'s web server: the gallery on 127.0.0.1, decisions written as they are clicked.

Every URL starts with a random token (``/<token>/``), compared in constant time; anything else
gets 403, so another local user or a web page in the browser that does not know the token can
neither read the outputs nor record a verdict. Decisions must be ``application/json`` POSTs
(which a foreign page cannot send without a CORS preflight this server never grants) and go to
the state at once through the one store the command holds (the SQLite file or the shared database).
The gallery is rendered per request, so a reload shows the state's current decisions.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.to_thread
from aiohttp import web

from pipeline.errors import StateError
from pipeline.output.report import render_report
from pipeline.state.opening import state_location
from pipeline.state.review_store import ReviewedState

__all__ = ["ReviewServer"]

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


class ReviewServer:
    """Serve ``out`` as a review gallery on ``host:port`` (0: a free port) under ``/<token>/``."""

    def __init__(
        self,
        out: Path,
        store: ReviewedState,
        *,
        token: str,
        groups: Mapping[str, tuple[str, str]] | None = None,
        title: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._out, self._store, self._token = Path(out), store, token
        self._groups, self._title = dict(groups or {}), title
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.port = port

    @property
    def url(self) -> str:
        """The gallery's address, token included (print it; never log it)."""
        return f"http://{self._host}:{self.port}/{self._token}/"

    async def __aenter__(self) -> ReviewServer:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/{token}", self._slash)
        app.router.add_get("/{token}/", self._page)
        app.router.add_get("/{token}/api/decisions", self._list)
        app.router.add_post("/{token}/api/decisions", self._decide)
        app.router.add_get("/{token}/{path:.+}", self._file)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        first = request.path.split("/", 2)[1]
        if not hmac.compare_digest(first.encode(), self._token.encode()):
            return web.Response(status=403, text="forbidden: open the URL `review` printed (with its token)")
        response: web.StreamResponse = await handler(request)
        response.headers.update(_HEADERS)
        return response

    async def _slash(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/{self._token}/")  # relative links resolve under the token only with the slash

    async def _page(self, request: web.Request) -> web.Response:
        state = state_location(self._store)
        html = await anyio.to_thread.run_sync(
            lambda: render_report(
                self._out, state_path=state, title=self._title, groups=self._groups, mode="review"
            )
        )
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    async def _list(self, request: web.Request) -> web.Response:
        decisions = await anyio.to_thread.run_sync(self._store.decisions)
        return web.json_response({"decisions": [asdict(d) for d in decisions.values()]})

    async def _decide(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return web.json_response({"error": "send application/json"}, status=415)
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"http://{request.host}":
            return web.json_response({"error": "cross-origin request refused"}, status=403)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("not an object")
            note = body.get("note")
            record = await self._store.record_decision(
                str(body.get("sha256", "")),
                str(body.get("verdict", "")),
                note=str(note)[:500] if note else None,
                path=_text(body.get("path")),
                item_id=_text(body.get("item")),
            )
        except (ValueError, TypeError, StateError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        current = await anyio.to_thread.run_sync(self._store.decisions)
        now = current.get(record.sha256)
        return web.json_response({"current": asdict(now) if now is not None else None})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        parts = rel.split("/")
        if any(not p or p.startswith(".") for p in parts) or "\\" in rel or "\0" in rel:
            raise web.HTTPNotFound()
        root = self._out.resolve()
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(target)


def _text(value: object) -> str | None:
    return value[:1000] if isinstance(value, str) and value else None
