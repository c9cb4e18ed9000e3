"""``python -m neurogate`` is the ``neurogate`` command."""

from neurogate.cli import main

raise SystemExit(main())
