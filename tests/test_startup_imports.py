"""Start-up stays light: what ``run`` imports before its first POST, and aiohttp's deferred CA loading.

Each check runs in a fresh interpreter (``sys.modules`` of the test process is already full)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _fresh(code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# Modules only other commands or later phases need; none may load while ``run`` sets up.
_HEAVY = (
    "jinja2",
    "aiobotocore",
    "botocore",
    "psycopg",
    "rich",
    "apprise",
    "hypothesis",
    "importlib.metadata",
    "greenlet",  # only structlog's deprecated greenlet-local context wants it (pipeline/__init__.py)
    "pipeline.output.report",
    "pipeline.output.review_server",
    "pipeline.simulator",
    "pipeline.engine.regenerate",
    "pipeline.cli.notify",
    "aiofiles",  # input uploads only (pipeline/engine/provision.py)
    "difflib",  # "did you mean" for a manifest's mistakes
)
# The other commands' modules (their parsers and bodies): ``run`` builds only its own parser.
_OTHER_COMMANDS = ("pipeline.cli.api_commands", "pipeline.cli.inspect_commands", "pipeline.cli.review")


def test_building_the_command_line_imports_no_command_body() -> None:
    """``photogpt-pipeline run --help`` (and every command's parsing) stays off aiohttp and the engine."""
    seen = _fresh(
        """
        import json, sys
        from pipeline.cli import main
        main._build_parser().parse_args(["run", "m.yaml"])
        print(json.dumps({"loaded": sorted(sys.modules)}))
        """
    )
    loaded = set(seen["loaded"])  # type: ignore[call-overload]
    unwanted = {"aiohttp", "pipeline.engine.run", "pipeline.manifest.load", "yaml", *_HEAVY}
    assert not unwanted & loaded


def test_the_run_path_imports_nothing_it_does_not_use() -> None:
    """Everything a run imports up to its first request, and none of the other commands' modules."""
    seen = _fresh(
        """
        import json, sys
        from pipeline.cli import main
        main._build_parser("run").parse_args(["run", "m.yaml"])
        import pipeline.cli.run_command, pipeline.engine.wiring, pipeline.engine.run, pipeline.engine.session
        import pipeline.manifest.load, pipeline.state.opening, pipeline.api.client
        print(json.dumps({"loaded": sorted(sys.modules)}))
        """
    )
    loaded = set(seen["loaded"])  # type: ignore[call-overload]
    assert "aiohttp" in loaded  # the check below means something
    assert not {m for m in loaded for h in _HEAVY + _OTHER_COMMANDS if m == h or m.startswith(h + ".")}


def test_the_user_agent_version_is_the_installed_one() -> None:
    """pyproject reads the version from ``pipeline.__version__``; no importlib.metadata at run time."""
    import importlib.metadata

    import pipeline

    assert importlib.metadata.version("photogpt-pipeline") == pipeline.__version__


def test_a_real_run_reaches_its_first_post_without_the_other_commands_modules(
    sandbox_process: str, tmp_path: Path
) -> None:
    """The real ``run`` against the sandbox process: what is loaded when its first POST goes out."""
    (tmp_path / "m.csv").write_text("sku\na\nb\n", encoding="utf-8")
    (tmp_path / "m.yaml").write_text(_MANIFEST, encoding="utf-8")
    seen = _fresh(
        f"""
        import gc, json, sys
        import aiohttp
        at_post = []
        original = aiohttp.ClientSession._request

        async def spy(self, method, url, *args, **kwargs):
            if method == "POST" and not at_post:
                at_post.append((sorted(sys.modules), gc.isenabled(), gc.get_freeze_count()))
            return await original(self, method, url, *args, **kwargs)

        aiohttp.ClientSession._request = spy
        from pipeline.cli.main import main
        sys.argv = ["photogpt-pipeline", "run", {str(tmp_path / "m.yaml")!r},
                    "--out", {str(tmp_path / "out")!r},
                    "--base-url", {sandbox_process!r}, "--no-progress", "--log-level", "error"]
        import os
        real_exit = os._exit

        def report(code):  # main() without argv ends the process itself (os._exit)
            loaded, collecting, frozen = at_post[0] if at_post else (None, None, None)
            print(json.dumps({{"code": code, "loaded": loaded, "collecting": collecting, "frozen": frozen}}))
            sys.stdout.flush()
            real_exit(code)

        os._exit = report
        main()  # no argv: the process's own command line, as the installed command calls it
        """,
        env={"PHOTOGPT_API_KEY": "sandbox"},
    )
    assert seen["code"] == 0 and seen["loaded"] is not None
    loaded = set(seen["loaded"])  # type: ignore[call-overload]
    assert "pipeline.engine.run" in loaded  # the check below means something
    assert not {m for m in loaded for h in _HEAVY + _OTHER_COMMANDS if m == h or m.startswith(h + ".")}
    # The collector, paused while the command imported, runs again, with the imports frozen.
    assert seen["collecting"] is True and int(seen["frozen"]) > 10_000  # type: ignore[call-overload]


def test_code_calling_main_in_process_keeps_its_collector() -> None:
    """Only the process's own command line pauses the collector; ``main([...])`` leaves it alone."""
    seen = _fresh(
        """
        import gc, json
        from pipeline.cli.main import main
        code = main(["run", "no-such.yaml", "--log-level", "error"])  # imports the engine, then fails
        print(json.dumps({"code": code, "collecting": gc.isenabled(), "frozen": gc.get_freeze_count()}))
        """
    )
    assert seen == {"code": 2, "collecting": True, "frozen": 0}


_MANIFEST = """\
version: 1
name: m
defaults:
  image:
    modelID: gpt-image-2
    aspectRatio: "1:1"
    numImages: 1
    options: {openai: {imageSize: 1K, outputFormat: jpeg, quality: low}}
rows: m.csv
items:
  - id: "{sku}"
    prompt: "A studio photo of {sku}"
"""


def test_the_run_only_parser_parses_and_complains_as_the_full_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``run`` builds only its own sub-parser; what it parses, its help and its errors are unchanged."""
    from pipeline.cli import main

    argv = ["run", "m.yaml", "--max-active", "8", "--log-format", "json", "--notify", "json://x"]
    assert main._build_parser("run").parse_args(argv) == main._build_parser().parse_args(argv)
    for bad in (["run"], ["run", "m.yaml", "--max-active", "many"], ["run", "--help"]):
        said = []
        for parser in (main._build_parser("run"), main._build_parser()):
            with pytest.raises(SystemExit) as stopped:
                parser.parse_args(bad)
            said.append((stopped.value.code, capsys.readouterr()))
        assert said[0] == said[1]
