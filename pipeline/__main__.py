"""``python -m pipeline`` is the same as the ``photogpt-pipeline`` command."""

from pipeline.cli.main import main

raise SystemExit(main())
