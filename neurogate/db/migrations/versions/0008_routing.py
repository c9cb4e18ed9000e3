"""Routing decisions (which studies are analysed, how urgently, with which models, for whom)
and webhook deliveries (result notifications with their attempts).

Revision ID: 0008
Revises: 0007_seed_patients
Create Date: 2026-12-03 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007_seed_patients"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "routing_decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("rule", sa.String(64)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("model_set", sa.String(64), nullable=False),
        sa.Column("destinations", sa.JSON),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("facts", sa.JSON, nullable=False),
        sa.Column("decided_at", _UTC, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("delivery_id", sa.String(36), nullable=False, unique=True),
        sa.Column("webhook", sa.String(64), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
        sa.Column(
            "analysis_id",
            sa.Integer,
            sa.ForeignKey("analyses.id", ondelete="CASCADE"),
            index=True,
        ),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("outcomes", sa.JSON, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("http_status", sa.Integer),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("next_attempt_at", _UTC),
        sa.Column("sent_at", _UTC),
        sa.Column("claim_token", sa.String(36)),
        sa.Column("claimed_until", _UTC),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("routing_decisions")
