"""Seed 003's portal: patients' contact details, picture scans with Grad-CAM, scan reports.

Revision ID: 0007_seed_patients
Revises: 0006
Create Date: 2026-12-03 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_seed_patients"
down_revision = "0006"
branch_labels = None
depends_on = None

_PATIENT_COLUMNS = (
    sa.Column("email", sa.String(length=254), nullable=True),
    sa.Column("age", sa.Integer(), nullable=True),
    sa.Column("phone", sa.String(length=32), nullable=True),
    sa.Column("address", sa.String(length=256), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
)


def upgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        for column in _PATIENT_COLUMNS:
            batch.add_column(column)
    op.create_table(
        "image_scans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.String(length=32), nullable=False),
        sa.Column("patient_ref", sa.Integer(), nullable=False),
        sa.Column("original_filename", sa.String(length=255), nullable=False),
        sa.Column("original_path", sa.String(length=255), nullable=False),
        sa.Column("heatmap_path", sa.String(length=255), nullable=False),
        sa.Column("overlay_path", sa.String(length=255), nullable=False),
        sa.Column("prediction", sa.String(length=32), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("uploaded_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patient_ref"], ["patients.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scan_id"),
    )
    op.create_index("ix_image_scans_patient_ref", "image_scans", ["patient_ref"])
    op.create_table(
        "scan_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.String(length=32), nullable=False),
        sa.Column("patient_ref", sa.Integer(), nullable=False),
        sa.Column("report_path", sa.String(length=255), nullable=False),
        sa.Column("scan_count", sa.Integer(), nullable=False),
        sa.Column("tumor_count", sa.Integer(), nullable=False),
        sa.Column("no_tumor_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patient_ref"], ["patients.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("report_id"),
    )
    op.create_index("ix_scan_reports_patient_ref", "scan_reports", ["patient_ref"])


def downgrade() -> None:
    op.drop_index("ix_scan_reports_patient_ref", table_name="scan_reports")
    op.drop_table("scan_reports")
    op.drop_index("ix_image_scans_patient_ref", table_name="image_scans")
    op.drop_table("image_scans")
    with op.batch_alter_table("patients") as batch:
        for column in reversed(_PATIENT_COLUMNS):
            batch.drop_column(column.name)
