"""``python -m pipeline`` is the same as the ``photogpt-pipeline`` command."""

from pipeline.cli import collector

collector.pause()  # the command line's imports; main() resumes it (pipeline/cli/collector.py)

from pipeline.cli.main import main  # noqa: E402 - after the pause, which is the point

raise SystemExit(main())
