"""The node's database as it is, for commands that read state (``neurogate studies``).

Such a command run from another working directory, or with another environment, must not
quietly make a new, empty SQLite file under ``./var`` and report that nothing arrived: it says
which database it reads, and refuses one that does not exist or holds no current schema. Only
``neurogate run`` (and the services) and ``neurogate db upgrade`` create and migrate.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from neurogate.db.engine import create_db_engine
from neurogate.db.migrate import current_revision, head_revision

_HOW_TO_POINT = (
    "set NEUROGATE_DATA_DIR (relative paths start at the working directory) or "
    "NEUROGATE_DATABASE_URL to the node's, or create it with `neurogate db upgrade`"
)


class DatabaseUnavailable(Exception):
    """The configured database is missing, unreachable or not at this code's schema."""


def describe(url: str) -> str:
    """``url`` fit to print: the password hidden, a SQLite file as its absolute path."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return f"sqlite {Path(parsed.database).resolve()}"
    return parsed.render_as_string(hide_password=True)


def open_existing(url: str) -> Engine:
    """An engine on the database at ``url``, which must exist at the newest schema.

    Raises
    ------
    DatabaseUnavailable
        With a message naming the database and what to do.
    """
    parsed = make_url(url)
    shown = describe(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise DatabaseUnavailable(f"no database at {shown}: {_HOW_TO_POINT}")
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            revision = current_revision(connection)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseUnavailable(f"cannot read {shown}: {type(exc).__name__}: {exc}") from exc
    head = head_revision()
    if revision is None:
        engine.dispose()
        raise DatabaseUnavailable(f"{shown} holds no NeuroGate schema: {_HOW_TO_POINT}")
    if revision != head:
        engine.dispose()
        raise DatabaseUnavailable(
            f"{shown} is at schema {revision}, this version reads {head}: "
            "run `neurogate db upgrade`"
        )
    return engine
