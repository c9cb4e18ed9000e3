"""Seed 003's portal storage: picture scans (original, Grad-CAM heatmap and overlay) and PDF
reports of a patient's scans, as files under the storage root, recorded in ``image_scans``
and ``scan_reports``."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from api.schemas import ClassifyOut
from api.seeds.common import NO_TUMOUR, display_name
from neurogate.db.models import ImageScan, Patient, ScanReport

SCANS_DIR = "portal/scans"
REPORTS_DIR = "portal/reports"
_ID_BYTES = 6


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(_ID_BYTES).upper()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def store_scan(
    root: Path,
    *,
    patient: Patient,
    filename: str,
    data: bytes,
    result: ClassifyOut,
    uploaded_by: str | None,
) -> ImageScan:
    """Write the picture and its Grad-CAM pictures; the (unsaved) row that records them."""
    scan_id = new_id("SC")
    folder = Path(SCANS_DIR) / scan_id
    suffix = Path(filename).suffix.lower()[:8] or ".bin"
    files = {
        "original": (folder / f"original{suffix}", data),
        "heatmap": (folder / "heatmap.png", base64.b64decode(result.heatmap_only)),
        "overlay": (folder / "overlay.png", base64.b64decode(result.heatmap_overlay)),
    }
    for relative, content in files.values():
        _write(root / relative, content)
    return ImageScan(
        scan_id=scan_id,
        patient_ref=patient.id,
        original_filename=Path(filename).name[:255],
        original_path=files["original"][0].as_posix(),
        heatmap_path=files["heatmap"][0].as_posix(),
        overlay_path=files["overlay"][0].as_posix(),
        prediction=result.class_,
        confidence=result.confidence,
        probabilities=result.probabilities,
        uploaded_by=uploaded_by,
        created_at=dt.datetime.now(dt.UTC),
    )


def write_report(root: Path, *, patient: Patient, scans: Sequence[ImageScan]) -> ScanReport:
    """A PDF of ``scans`` (each with its prediction and Grad-CAM overlay); the unsaved row."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    report_id = new_id("RP")
    relative = Path(REPORTS_DIR) / f"{report_id}.pdf"
    styles = getSampleStyleSheet()
    now = dt.datetime.now(dt.UTC)
    tumours = sum(1 for scan in scans if scan.prediction != NO_TUMOUR)
    story = [
        Paragraph("NeuroGate brain MRI scan report", styles["Title"]),
        Paragraph(
            f"Patient: {_text(patient.name)} (ID {_text(patient.patient_id)}); age "
            f"{patient.age if patient.age is not None else '-'}; sex {patient.sex or '-'}",
            styles["Normal"],
        ),
        Paragraph(f"Generated {now:%Y-%m-%d %H:%M} UTC; {len(scans)} scan(s)", styles["Normal"]),
        Paragraph(
            f"Tumour suspected on {tumours}, none on {len(scans) - tumours}", styles["Normal"]
        ),
        Spacer(1, 6 * mm),
    ]
    rows = [["Scan", "File", "Date", "Prediction", "Confidence"]]
    for scan in scans:
        rows.append(
            [
                scan.scan_id,
                _text(scan.original_filename)[:40],
                f"{scan.created_at:%Y-%m-%d}",
                display_name(scan.prediction),
                f"{scan.confidence:.1%}",
            ]
        )
    table = Table(rows, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
            ]
        )
    )
    story += [table, Spacer(1, 6 * mm)]
    for scan in scans:
        story.append(Paragraph(f"{scan.scan_id}: Grad-CAM overlay", styles["Heading4"]))
        story.append(Image(str(root / scan.overlay_path), width=60 * mm, height=60 * mm))
    story.append(
        Paragraph(
            "Decision support only: the classification of a single picture by a model; it is "
            "not a diagnosis.",
            styles["Italic"],
        )
    )
    buffer = io.BytesIO()
    SimpleDocTemplate(buffer, pagesize=A4, title="NeuroGate scan report").build(story)
    _write(root / relative, buffer.getvalue())
    return ScanReport(
        report_id=report_id,
        patient_ref=patient.id,
        report_path=relative.as_posix(),
        scan_count=len(scans),
        tumor_count=tumours,
        no_tumor_count=len(scans) - tumours,
        created_at=now,
    )


def _text(value: str | None) -> str:
    """Plain text for a reportlab paragraph (its markup characters escaped)."""
    from xml.sax.saxutils import escape

    return escape(value or "-")
