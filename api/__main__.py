"""``python -m api``: serve the REST API with uvicorn, from the environment's settings.

Events the API commits to the outbox are published by the node's relays (``neurogate api``
runs the API together with a relay of its own; see :mod:`api.server`).
"""

import uvicorn

from api.app import create_app
from api.secret_policy import InsecureSetting
from api.server import uvicorn_config
from neurogate.logging import configure_logging
from neurogate.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except InsecureSetting as exc:
        raise SystemExit(f"python -m api: {exc}") from None
    uvicorn.Server(uvicorn_config(app, settings)).run()


if __name__ == "__main__":
    main()
