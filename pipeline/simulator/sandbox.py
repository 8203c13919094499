"""Running the simulator on a local port: in-process for tests, or until cancelled for the CLI."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

from pipeline.clock import Clock
from pipeline.simulator.app import create_app
from pipeline.simulator.config import SimConfig
from pipeline.simulator.runtime import SIMULATOR, Simulator

__all__ = ["Sandbox", "serve"]

log = logging.getLogger(__name__)


class Sandbox:
    """``async with Sandbox(config) as sb``: a simulator on ``host:port`` (0 picks a free port)."""

    def __init__(
        self,
        config: SimConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        self._app = create_app(config, clock=clock)
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None

    @property
    def _sim(self) -> Simulator:
        return self._app[SIMULATOR]

    @property
    def origin(self) -> str:
        """``http://host:port``: where asset files and ``/_sim`` live."""
        if self._runner is None:
            raise RuntimeError("the sandbox is not running")
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """The API base, ``<origin>/api``."""
        return f"{self.origin}/api"

    def stats(self) -> dict[str, Any]:
        """The same counters as ``GET /_sim/stats``."""
        return self._sim.stats()

    @property
    def clock(self) -> Clock:
        """The clock the simulator's jobs and limits run on (a test runs its client on the same one)."""
        return self._sim.clock

    def ledger(self) -> list[dict[str, Any]]:
        """The per-job entries of ``GET /_sim/ledger``."""
        return self._sim.ledger()

    def control(self, **changes: Any) -> dict[str, Any]:
        """Like ``POST /_sim/control``: ``next_n_429``, ``next_n_5xx``, ``reset`` or config fields."""
        return self._sim.control(**changes)

    async def __aenter__(self) -> Sandbox:
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


async def serve(
    config: SimConfig, host: str, port: int, listening: Callable[[str], None] | None = None
) -> None:
    """Serve the simulator on ``host:port`` with the system clock until cancelled.

    ``listening`` gets the origin once the socket is bound: with port 0 that is the only place
    the chosen port shows (a caller that picked a "free" port itself could lose it to another
    process before the bind)."""
    async with Sandbox(config, host=host, port=port) as sandbox:
        log.info("PhotoGPT simulator listening on %s", sandbox.base_url)
        if listening is not None:
            listening(sandbox.origin)
        await asyncio.Event().wait()
