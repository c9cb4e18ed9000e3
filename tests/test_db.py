"""Migrations on SQLite and PostgreSQL: they apply, re-apply, and match the ORM models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from neurogate.db import create_db_engine, upgrade_to_head
from neurogate.db.models import Base


def test_migrations_create_the_schema_the_models_describe(database_url: str) -> None:
    upgrade_to_head(database_url)
    upgrade_to_head(database_url)  # idempotent
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert {"studies", "series", "outbox_events", "performed_procedure_steps"} <= set(
                inspect(connection).get_table_names()
            )
    finally:
        engine.dispose()
