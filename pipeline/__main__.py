"""``python -m pipeline`` is the same as the ``photogpt-pipeline`` command."""

from pipeline.cli import main

raise SystemExit(main())
