"""The FastAPI application: ``create_app(settings)``.

Settings, password hashing and the token secret are bound when the app is made; the database
engine when it starts (its lifespan), unless the caller hands in its own session factory (the
node's process shares one). Nothing is built at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.orm import Session, sessionmaker

from api.bootstrap import ensure_admin
from api.context import ApiContext
from api.docs import install_docs
from api.errors import install_error_handlers, responses
from api.inference import Classifier
from api.limits import BodySizeLimit
from api.metrics import MetricsMiddleware
from api.routes import audit, auth, dicomweb, operator, patients, service, studies, uploads, users
from api.secret_policy import check_production_secrets
from api.security import BCRYPT_ROUNDS, PasswordHasher, TokenIssuer
from api.seeds import ERROR_BODIES as SEED_ERROR_BODIES
from api.seeds import ROUTERS as SEED_ROUTERS
from api.throttle import LoginThrottle
from neurogate.settings import Settings

log = logging.getLogger(__name__)

_MB = 1 << 20


def create_app(
    settings: Settings,
    *,
    sessions: sessionmaker[Session] | None = None,
    on_change: Callable[[], None] = lambda: None,
    bcrypt_rounds: int = BCRYPT_ROUNDS,
    sse_poll_seconds: float = 1.0,
) -> FastAPI:
    """The REST API for ``settings``.

    Parameters
    ----------
    settings
        Node settings; ``settings.api`` holds the API's own.
    sessions
        A session factory to use; ``None``: the app opens (and migrates, if the settings say
        so) the configured database when it starts, and disposes of it when it stops.
    on_change
        Called after the app has put events in the outbox, to wake a relay.
    bcrypt_rounds
        Cost of the password hashes (tests lower it).
    sse_poll_seconds
        How often a study's event stream looks at the database.

    Raises
    ------
    api.secret_policy.InsecureSetting
        In the production profile, with a weak JWT secret or admin password (a ``ValueError``).
    """
    check_production_secrets(settings)
    context = ApiContext(
        settings=settings,
        passwords=PasswordHasher(bcrypt_rounds),
        tokens=TokenIssuer.from_settings(settings),
        classifier=Classifier(settings.models.classification),
        login_throttle=LoginThrottle(
            max_failures=settings.api.login_max_failures,
            window_seconds=settings.api.login_window_seconds,
        ),
        open_throttle=LoginThrottle(
            max_failures=settings.api.open_rate_limit,
            window_seconds=settings.api.open_rate_window_seconds,
        ),
        on_change=on_change,
        sse_poll_seconds=sse_poll_seconds,
        sessions=sessions,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine = None
        if context.sessions is None:
            from neurogate.db import create_db_engine, session_factory, upgrade_to_head

            if settings.db_auto_migrate:
                upgrade_to_head(settings.sqlalchemy_url)
            engine = create_db_engine(settings.sqlalchemy_url)
            context.sessions = session_factory(engine)
        ensure_admin(settings, context.session_factory(), context.passwords)
        log.info("api started", extra={"profile": settings.profile})
        try:
            yield
        finally:
            if engine is not None:
                engine.dispose()
                context.sessions = None

    app = FastAPI(
        title="NeuroGate API",
        version=service.API_VERSION,
        description="Brain-MRI tumour analysis: studies, analyses, uploads, classification.",
        lifespan=lifespan,
        # Any route may meet a body it cannot parse, or fail unexpectedly.
        responses=responses(400, 500),
        # FastAPI's pages load their assets from a CDN; install_docs serves them locally.
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = context
    install_error_handlers(app)
    install_docs(app)
    routers = (auth, users, patients, studies, uploads, service, audit, dicomweb, operator)
    for module in routers:
        app.include_router(module.router)
    for router in SEED_ROUTERS:  # the seeds' REST contracts (api/seeds/)
        app.include_router(router)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=int(settings.api.max_request_mb * _MB),
        path_limits={
            path: int(settings.api.max_upload_mb * _MB)
            for path in (uploads.UPLOAD_PATH, dicomweb.STOW_PATH)
        },
        path_bodies=SEED_ERROR_BODIES,
    )
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials=False,
        )
    app.add_middleware(MetricsMiddleware, metrics=context.metrics)
    return app
