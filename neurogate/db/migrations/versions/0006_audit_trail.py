"""The audit trail: who read or exported which patient's study, report or images, and every
sign-in and account change; append-only (a trigger refuses UPDATE and DELETE).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TABLE = "audit_events"
_INDEXED = ("at", "username", "study_instance_uid", "patient_id")
_REFUSAL = "audit_events is append-only"

_POSTGRES_UP = (
    f"""
    CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{_REFUSAL}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    f"""
    CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON {_TABLE}
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()
    """,
    f"""
    CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON {_TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()
    """,
)
_POSTGRES_DOWN = (
    f"DROP TRIGGER IF EXISTS audit_events_no_truncate ON {_TABLE}",
    f"DROP TRIGGER IF EXISTS audit_events_no_change ON {_TABLE}",
    "DROP FUNCTION IF EXISTS audit_events_append_only()",
)
_SQLITE_UP = tuple(
    f"""
    CREATE TRIGGER audit_events_no_{operation.lower()} BEFORE {operation} ON {_TABLE}
    BEGIN SELECT RAISE(ABORT, '{_REFUSAL}: {operation} refused'); END
    """
    for operation in ("UPDATE", "DELETE")
)
_SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS audit_events_no_update",
    "DROP TRIGGER IF EXISTS audit_events_no_delete",
)


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=True),
        sa.Column("peer", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("object_type", sa.String(length=16), nullable=False),
        sa.Column("object_id", sa.String(length=128), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in _INDEXED:
        op.create_index(f"ix_{_TABLE}_{column}", _TABLE, [column])
    dialect = op.get_bind().dialect.name
    for statement in {"postgresql": _POSTGRES_UP, "sqlite": _SQLITE_UP}.get(dialect, ()):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in {"postgresql": _POSTGRES_DOWN, "sqlite": _SQLITE_DOWN}.get(dialect, ()):
        op.execute(statement)
    for column in _INDEXED:
        op.drop_index(f"ix_{_TABLE}_{column}", table_name=_TABLE)
    op.drop_table(_TABLE)
