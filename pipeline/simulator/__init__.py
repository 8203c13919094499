"""A local PhotoGPT API simulator: the reference's endpoints, rules, jobs and faults, in memory.

Tests, demos and benchmarks talk to it over real HTTP on 127.0.0.1; it never
imports the client side, so the wire contract is checked from both ends.
"""

from pipeline.simulator.app import create_app
from pipeline.simulator.config import SimConfig
from pipeline.simulator.sandbox import Sandbox, serve

__all__ = ["Sandbox", "SimConfig", "create_app", "serve"]
