"""``python -m api``: run the REST API alone, the same as ``neurogate api``.

That is the API with its own outbox relay (:class:`api.server.ApiService`), after the same
checks of the settings; arguments pass through (``python -m api --help``).
"""

import sys

from neurogate.cli import main

raise SystemExit(main(["api", *sys.argv[1:]]))
