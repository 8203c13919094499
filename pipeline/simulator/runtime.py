"""One running simulator: its config, state and fault injector, and the runtime controls.

Tests and benchmarks change faults mid-run through :meth:`Simulator.control`,
in-process or over ``POST /_sim/control``; both go through this one object.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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

    @property
    def config(self) -> SimConfig:
        return self.store.config

    def control(self, **changes: Any) -> dict[str, Any]:
        """Change behaviour at runtime: ``reset``, ``next_n_429``, ``next_n_5xx``, ``expire_urls``,
        or any config field."""
        reset = bool(changes.pop("reset", False))
        counters = {k: changes.pop(k) for k in ("next_n_429", "next_n_5xx") if k in changes}
        expire = bool(changes.pop("expire_urls", False))
        if any(not isinstance(v, int) or v < 0 for v in counters.values()):
            raise ValueError("next_n_429 and next_n_5xx must be integers >= 0")
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
            "credits": self.store.credits,
            "config": settings,
        }

    def stats(self) -> dict[str, Any]:
        return self.store.stats()

    def ledger(self) -> list[dict[str, Any]]:
        return self.store.ledger()


SIMULATOR = web.AppKey("simulator", Simulator)
#: The fingerprint of the request's API key, set once the key is accepted.
OWNER = web.RequestKey("owner", str)


def simulator(request: web.Request) -> Simulator:
    """The simulator serving ``request``."""
    return request.app[SIMULATOR]
