"""The node's relational database: SQLite by default, PostgreSQL in production."""

from neurogate.db.engine import create_db_engine, session_factory
from neurogate.db.migrate import upgrade_to_head

__all__ = ["create_db_engine", "session_factory", "upgrade_to_head"]
