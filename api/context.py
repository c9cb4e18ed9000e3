"""What the routes share for the life of the app, bound once at start-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from api.inference import Classifier
from api.metrics import Metrics
from api.security import PasswordHasher, TokenIssuer
from api.throttle import LoginThrottle
from neurogate.settings import Settings


@dataclass
class ApiContext:
    """The app's dependencies; ``sessions`` is set when the app starts (its lifespan).

    Parameters
    ----------
    settings
        Node settings.
    passwords, tokens
        Password hashing and access tokens.
    classifier
        The slice classifier, loaded on first use (TensorFlow is imported then, not before).
    login_throttle
        Counts failed sign-ins (:mod:`api.throttle`).
    open_throttle
        Counts the requests of each client to the open image routes (``api.open_image_routes``).
    on_change
        Called after a commit that put events in the outbox (wakes a relay in the same process).
    sse_poll_seconds
        How often the event stream of a study looks at the database.
    """

    settings: Settings
    passwords: PasswordHasher
    tokens: TokenIssuer
    classifier: Classifier
    login_throttle: LoginThrottle
    open_throttle: LoginThrottle
    metrics: Metrics = field(default_factory=Metrics)
    on_change: Callable[[], None] = lambda: None
    sse_poll_seconds: float = 1.0
    sessions: sessionmaker[Session] | None = field(default=None)
    started: float = field(default_factory=time.monotonic)  # for the uptime in /api/health

    def session_factory(self) -> sessionmaker[Session]:
        if self.sessions is None:
            raise RuntimeError("the API's database is not bound: the app has not started")
        return self.sessions
