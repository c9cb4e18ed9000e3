"""The API as a service of the node (``neurogate api``, ``neurogate run``): uvicorn on a thread,
and an outbox relay that publishes what the API enqueues."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.inference import ClassifierUnavailable
from api.secret_policy import InsecureSetting
from neurogate.bus import Bus
from neurogate.outbox import service_relay
from neurogate.settings import Settings
from schemas.topics import Topic

log = logging.getLogger(__name__)

# Studies received over STOW-RS (api.stow) are announced as the listener announces its own.
PUBLISHED_TOPICS = (Topic.ANALYSIS_REQUESTED, Topic.STUDY_RECEIVED)
_START_TIMEOUT_S = 30.0


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn for ``app``, believing X-Forwarded-For only from ``api.trusted_proxies``.

    uvicorn's own default believes it from 127.0.0.1 (or ``$FORWARDED_ALLOW_IPS``): any local
    process, or a proxy that passes the header through, could then choose the client address
    the sign-in throttle counts and the logs and audit trail name.
    """
    trusted = list(settings.api.trusted_proxies)
    return uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
    )


class ApiService:
    """Serves the REST API until stopped.

    Parameters
    ----------
    settings
        Node settings; ``settings.api`` has the address.
    sessions
        The process' database session factory.
    bus
        Where the API's events (analysis requests) are published, through the outbox.

    Raises
    ------
    SystemExit
        With one line naming the setting, when the production profile refuses a secret; with
        one naming the manifest field, when the classifier fails its start-up check.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], bus: Bus) -> None:
        self._settings = settings
        self.relay = service_relay(sessions, bus, settings.bus, PUBLISHED_TOPICS)
        try:
            app = create_app(settings, sessions=sessions, on_change=self.relay.wake)
        except InsecureSetting as exc:
            self.relay.close()
            raise SystemExit(f"neurogate api: {exc}") from None
        try:  # the start-up check: a classifier that cannot serve stops the API here
            app.state.context.classifier.load()
        except ClassifierUnavailable as exc:
            self.relay.close()
            raise SystemExit(f"neurogate api: {exc}") from None
        self._server = uvicorn.Server(uvicorn_config(app, settings))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn("api-server", self._server.run)
        self._spawn("api-outbox-relay", lambda: self.relay.run(self._stop))
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started and time.monotonic() < deadline:
            if not self._threads[0].is_alive():
                raise RuntimeError(
                    "the API server stopped while starting: see the error logged before this"
                )
            time.sleep(0.05)
        log.info(
            "api started",
            extra={"address": f"{self._settings.api.host}:{self._settings.api.port}"},
        )

    def stop(self) -> None:
        """Finish the requests in hand, then stop serving and relaying."""
        self._server.should_exit = True
        self._stop.set()
        self.relay.wake()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self.relay.close()
        log.info("api stopped")

    def _spawn(self, name: str, target: object) -> None:
        assert callable(target)
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
