"""One running simulator: its config, state and fault injector, and the runtime controls.

Tests and benchmarks change faults mid-run through :meth:`Simulator.control`,
in-process or over ``POST /_sim/control``; both go through this one object.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import anyio
from aiohttp import web

from pipeline.clock import Clock
from pipeline.simulator.config import SimConfig
from pipeline.simulator.faults import Faults
from pipeline.simulator.store import Store

__all__ = ["OWNER", "SIMULATOR", "Simulator", "simulator"]


class Simulator:
    """One simulator instance: current config, state and fault injector, plus runtime control."""

    def __init__(self, config: SimConfig, clock: Clock) -> None:
        self.clock = clock
        self.store = Store(config, clock)
        self.faults = Faults(config.seed)
        #: Routes whose requests wait at their point of no return until released (see :meth:`held`).
        self._holds: dict[str, anyio.Event] = {}
        self.waiting: Counter[str] = Counter()

    async def held(self, route: str) -> None:
        """Wait while ``route`` is held: tests order requests exactly, with no sleep.

        A job-creating POST waits after creating its job (its answer is held); any other
        request waits before it is handled (a held listing shows what exists when released).
        """
        gate = self._holds.get(route)
        if gate is None:
            return
        self.waiting[route] += 1
        try:
            await gate.wait()
        finally:
            self.waiting[route] -= 1

    @property
    def config(self) -> SimConfig:
        return self.store.config

    def control(self, **changes: Any) -> dict[str, Any]:
        """Change behaviour at runtime: ``reset``, ``next_n_429``, ``next_n_5xx``, ``next_n_lost``,
        ``expire_urls``, ``hold``/``release`` (lists of ``"METHOD /api/path"`` routes), or a config field."""
        reset = bool(changes.pop("reset", False))
        counters = {k: changes.pop(k) for k in ("next_n_429", "next_n_5xx", "next_n_lost") if k in changes}
        expire = bool(changes.pop("expire_urls", False))
        hold, release = list(changes.pop("hold", ())), list(changes.pop("release", ()))
        if any(not isinstance(v, int) or v < 0 for v in counters.values()):
            raise ValueError("next_n_429, next_n_5xx and next_n_lost must be integers >= 0")
        for route in hold:
            self._holds.setdefault(str(route), anyio.Event())
        for route in release:
            gate = self._holds.pop(str(route), None)
            if gate is not None:
                gate.set()
        config = self.config.replace(**changes)
        if reset:
            self.store, self.faults = Store(config, self.clock), Faults(config.seed)
        self.store.config = config
        if "credits" in changes:
            self.store.credits = config.credits
        for name, value in counters.items():
            setattr(self.faults, name, value)
        if expire:
            self.store.url_generation += 1
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "keys"}
        return {
            "next_n_429": self.faults.next_n_429,
            "next_n_5xx": self.faults.next_n_5xx,
            "next_n_lost": self.faults.next_n_lost,
            "held": sorted(self._holds),
            "credits": self.store.credits,
            "config": settings,
        }

    def stats(self) -> dict[str, Any]:
        return {**self.store.stats(), "waiting": {k: v for k, v in self.waiting.items() if v}}

    def ledger(self) -> list[dict[str, Any]]:
        return self.store.ledger()


SIMULATOR = web.AppKey("simulator", Simulator)
#: The fingerprint of the request's API key, set once the key is accepted.
OWNER = web.RequestKey("owner", str)


def simulator(request: web.Request) -> Simulator:
    """The simulator serving ``request``."""
    return request.app[SIMULATOR]
