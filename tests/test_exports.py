"""The public surface of every module is declared, sorted and complete."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import pipeline

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.") if m.name != "pipeline.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_declared_and_resolves(name: str) -> None:
    """Each module lists its public names in ``__all__`` (ruff's RUF022 keeps it sorted), and they exist."""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_simulator_does_not_import_the_client() -> None:
    """The simulator never imports the client side, so wire tests check the real contract."""
    import subprocess
    import sys

    code = (
        "import sys, pipeline.simulator; "
        "bad = [m for m in sys.modules if m.startswith('pipeline.api')]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)  # noqa: S603
    assert result.returncode == 0, f"simulator imported {result.stdout.strip()}"
