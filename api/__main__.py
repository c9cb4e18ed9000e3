"""``python -m api``: serve the REST API with uvicorn, from the environment's settings.

Events the API commits to the outbox are published by the node's relays (``neurogate api``
runs the API together with a relay of its own; see :mod:`api.server`).
"""

import uvicorn

from api.app import create_app
from neurogate.logging import configure_logging
from neurogate.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_config=None)


if __name__ == "__main__":
    main()
