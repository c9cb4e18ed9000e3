"""A human-readable report of an analysis, as PDF bytes and as an Encapsulated PDF instance.

The PDF is what a referring physician or a researcher without a DICOM viewer reads: who and which
study, what was found and how sure the models were, the tumour volumes, which series were used or
left out and why, the model versions, and two key images. A study the detector calls tumour-free
gets a report that says so plainly, with the detector's probability and the intracranial volume,
and nothing about a tumour class, tumour volumes or key images of a tumour. With a follow-up
comparison, a table gives each region's volume at the prior study and now, with both dates, and
the change in mL and percent. Every page says that this is research software, not for clinical
use.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, StyleSheet1, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus.flowables import Flowable

from inference_worker.analysis import Analysis, RegionMasks
from inference_worker.results.capture import overlay_png
from inference_worker.results.common import (
    MODEL_NAME,
    SOFTWARE_VERSION,
    assigned_class,
    copy_patient_study,
    decision_basis,
    frame_pixels,
    new_uid,
    plane_ranges,
    stamp_equipment,
    tumour_found,
)
from inference_worker.results.seg import SEGMENTS
from models.overlay import draw_outlines
from neurogate.settings import ResultSettings

SERIES_DESCRIPTION = "NeuroGate tumour report (PDF)"
DOCUMENT_TITLE = "NeuroGate brain MR tumour analysis"
ENCAPSULATED_PDF_STORAGE = UID("1.2.840.10008.5.1.4.1.1.104.1")
PDF_MIME_TYPE = "application/pdf"
DIAGNOSTIC_IMAGING_REPORT = codes.LN.DiagnosticImagingReport  # LN 18748-4, CID 7000
WORKSTATION = "WSD"  # Conversion Type
DISCLAIMER = (
    "Not for clinical use — research software. These results were produced automatically and "
    "have not been reviewed by a physician."
)
_KEY_IMAGE_MM = 75.0
_KEY_IMAGE_PIXELS = 480  # key images are enlarged to about this width
_FOOTER_POINTS = 7.0
_CELL_PADDING = 12  # points, left plus right, of a reportlab table cell (6 + 6)
_UID_POINTS = 8.0  # UIDs are set smaller than the body text: 64 digits fit in 125 mm

# Bitstream Vera, shipped with reportlab, embedded in the PDF. The standard 14 fonts (Helvetica)
# are not embedded: a viewer substitutes a font of other widths, and Chromium's viewer then clips
# the banner and lets the Study Instance UID run past its cell.
FONT, FONT_BOLD, FONT_ITALIC, FONT_BOLD_ITALIC = (
    "Vera",
    "Vera-Bold",
    "Vera-Italic",
    "Vera-BoldItalic",
)
_FONT_FILES = {FONT: "Vera.ttf", FONT_BOLD: "VeraBd.ttf", FONT_ITALIC: "VeraIt.ttf"}
_FONT_FILES[FONT_BOLD_ITALIC] = "VeraBI.ttf"
_TABLE_FONT = ("FONTNAME", (0, 0), (-1, -1), FONT)  # a table sets it before its cells, even
# when they hold paragraphs; its default is Helvetica
_STANDARD_TO_EMBEDDED = {
    "Helvetica": FONT,
    "Helvetica-Bold": FONT_BOLD,
    "Helvetica-Oblique": FONT_ITALIC,
    "Helvetica-BoldOblique": FONT_BOLD_ITALIC,
}


def _register_fonts() -> None:
    """Register the Vera family once, so that ``<b>`` and ``<i>`` in paragraphs use it too."""
    if FONT in pdfmetrics.getRegisteredFontNames():
        return
    for name, filename in _FONT_FILES.items():
        pdfmetrics.registerFont(TTFont(name, filename))  # found on reportlab's own font path
    pdfmetrics.registerFontFamily(
        FONT, normal=FONT, bold=FONT_BOLD, italic=FONT_ITALIC, boldItalic=FONT_BOLD_ITALIC
    )


def _styles() -> StyleSheet1:
    """reportlab's sample style sheet, every style in the embedded Vera family."""
    _register_fonts()
    styles = getSampleStyleSheet()
    for name in styles.byName:
        style = styles[name]
        if isinstance(style, ParagraphStyle):  # the sheet's list styles set no fonts
            style.fontName = _STANDARD_TO_EMBEDDED.get(style.fontName, style.fontName)
            style.bulletFontName = _STANDARD_TO_EMBEDDED.get(
                style.bulletFontName, style.bulletFontName
            )
    return styles


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(rgb, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _image(png: bytes, width_mm: float = _KEY_IMAGE_MM) -> Image:
    """A key image, enlarged with nearest neighbours so PDF viewers do not blur its outlines."""
    with PILImage.open(io.BytesIO(png)) as picture:
        width, height = picture.size
        factor = max(1, _KEY_IMAGE_PIXELS // max(width, 1))
        buffer = io.BytesIO()
        picture.resize((width * factor, height * factor), PILImage.Resampling.NEAREST).save(
            buffer, format="PNG"
        )
    buffer.seek(0)
    return Image(buffer, width=width_mm * mm, height=width_mm * mm * height / width)


def largest_tumour_frame(masks: RegionMasks) -> int | None:
    """Index of the frame with the largest whole-tumour area, None when no frame shows tumour."""
    areas = masks.masks["WT"].reshape(len(masks.frames), -1).sum(axis=1)
    return int(np.argmax(areas)) if areas.max(initial=0) > 0 else None


def outline_png(masks: RegionMasks, index: int, source_datasets: Sequence[Dataset]) -> bytes:
    """Source frame ``index`` of ``masks`` with the WT, TC and ET outlines, as PNG bytes."""
    ref = masks.frames[index]
    plane = frame_pixels(source_datasets, ref.sop_instance_uid, ref.frame_number)
    regions = [(masks.masks[region.key][index], region.colour) for region in SEGMENTS]
    return _png(draw_outlines(plane, regions))


def _table(
    rows: list[list[str]],
    widths: Sequence[float] | None = None,
    uid_cells: Sequence[tuple[int, int]] = (),
) -> Table:
    """A grid of paragraphs; the cells at ``uid_cells`` (row, column) hold UIDs (needs widths)."""
    style = _styles()["BodyText"]
    cells: list[list[Flowable]] = [
        [Paragraph(_escape(cell), style) for cell in row] for row in rows
    ]
    for row, column in uid_cells:
        if widths is None:
            raise ValueError("UID cells need column widths")
        cells[row][column] = uid_paragraph(rows[row][column], widths[column] - _CELL_PADDING)
    table = Table(cells, colWidths=widths, hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                _TABLE_FONT,
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return table


def uid_lines(uid: str, width: float) -> list[str]:
    """``uid`` in lines no wider than ``width`` points in the UID font, broken after dots.

    A component wider than a line on its own (the 39 digits of a ``2.25.`` UID) is cut where it
    fills the line. A UID has no spaces, so a paragraph would not break it and it would run past
    its cell.
    """
    _register_fonts()

    def fits(text: str) -> bool:
        return pdfmetrics.stringWidth(text, FONT, _UID_POINTS) <= width

    lines, line = [], ""
    for part in re.findall(r"[^.]+\.?|\.", uid):
        if fits(line + part):
            line += part
            continue
        if line:
            lines.append(line)
        while not fits(part):
            cut = max(1, max(n for n in range(len(part) + 1) if fits(part[:n])))
            lines.append(part[:cut])
            part = part[cut:]
        line = part
    return [*lines, line] if line else lines


def uid_paragraph(uid: str, width: float) -> Paragraph:
    """A UID in a smaller font, in as many lines as it needs to fit ``width`` points."""
    style = ParagraphStyle("uid", parent=_styles()["BodyText"], fontName=FONT)
    style.fontSize, style.leading = _UID_POINTS, _UID_POINTS * 1.2
    return Paragraph("<br/>".join(_escape(line) for line in uid_lines(uid, width)), style)


def _escape(text: object) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def readable_date(value: object) -> str:
    """A DICOM DA value (``19650101``) as a reader expects it (``1965-01-01``); else as is."""
    text = str(value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text or "—"


def _patient_rows(source: Dataset) -> list[list[str]]:
    def value(keyword: str) -> str:
        return str(source.get(keyword, "") or "—")

    birth, study_date = (readable_date(source.get(k)) for k in ("PatientBirthDate", "StudyDate"))
    return [
        ["Patient", str(source.get("PatientName", "") or "—").replace("^", " ").strip()],
        ["Patient ID", value("PatientID")],
        ["Birth date / sex", f"{birth} / {value('PatientSex')}"],
        ["Study", f"{value('StudyDescription')} ({study_date})"],
        ["Accession number", value("AccessionNumber")],
        ["Study Instance UID", value("StudyInstanceUID")],
        ["Report created", dt.datetime.now().strftime("%Y-%m-%d %H:%M")],
    ]


# How the classifier's planes were chosen (ClassificationFinding.planes_from), for the reader.
PLANES_FROM = {
    "segmentation": "the planes with the largest whole-tumour area",
    "detection": "the detector's surest planes",
}


def _findings(analysis: Analysis, heading: ParagraphStyle, body: ParagraphStyle) -> list[Flowable]:
    findings, story = analysis.findings, []
    story.append(Paragraph("Findings", heading))
    detection, tumour = findings.detection, tumour_found(findings)
    if detection is not None:
        verdict = "No tumour found." if not tumour else "Detection: Tumour present."
        story.append(Paragraph(f"<b>{verdict}</b> {_escape(decision_basis(findings))}", body))
    if findings.brain is not None:
        story.append(
            Paragraph(
                f"<b>Intracranial volume:</b> {findings.brain.volume_ml:.1f} mL "
                f"({_escape(findings.brain.series_role)} series).",
                body,
            )
        )
    classification = findings.classification
    if tumour and classification is not None:
        story.append(
            Paragraph(
                f"<b>Tumour class:</b> {_escape(classification.label)} "
                f"({_escape(classification.series_role)} series).",
                body,
            )
        )
        if classification.planes:
            how = PLANES_FROM.get(classification.planes_from, classification.planes_from)
            story.append(
                Paragraph(
                    f"Class decided on axial planes {plane_ranges(classification.planes)} of the "
                    f"2 mm analysis grid ({_escape(classification.series_role)} series): "
                    f"{_escape(how)}.",
                    body,
                )
            )
        ranked = sorted(classification.probabilities.items(), key=lambda kv: -kv[1])
        own, where = classification.classifier_probabilities, classification.location_probabilities
        if own is not None and where is not None:
            story.append(
                Paragraph(
                    "The class combines the slice classifier (what the planes look like) with "
                    "the location model (where the segmented lesion lies in the intracranial "
                    "space); each one's own probabilities are shown.",
                    body,
                )
            )
            rows = [["Class", "Probability", "Classifier alone", "Location alone"]]
            rows += [
                [
                    k,
                    f"{p:.3f}",
                    f"{own.get(k, 0.0):.3f}",
                    f"{where[k]:.3f}" if k in where else "n/a",
                ]
                for k, p in ranked
            ]
            story.append(_table(rows))
        else:
            story.append(_table([["Class", "Probability"]] + [[k, f"{p:.3f}"] for k, p in ranked]))
    segmentation = findings.segmentation
    if tumour and segmentation is not None:
        story.append(Spacer(1, 3 * mm))
        story.append(
            Paragraph(f"<b>Tumour volumes</b> ({segmentation.reference_role} reference):", body)
        )
        story.append(
            _table(
                [["Region", "Volume (mL)"]]
                + [
                    [f"{r.label} ({r.key})", f"{segmentation.volumes_ml[r.key]:.2f}"]
                    for r in SEGMENTS
                    if r.key in segmentation.volumes_ml
                ]
            )
        )
    for stage, why in sorted(findings.skipped.items()):
        story.append(Paragraph(f"<i>{_escape(stage)} did not run:</i> {_escape(why)}.", body))
    return story


def _follow_up(analysis: Analysis, heading: ParagraphStyle, body: ParagraphStyle) -> list[Flowable]:
    """The volumes against the most recent prior study, when there was one to compare."""
    prior = analysis.findings.prior
    if prior is None:
        return []
    before, now = readable_date(prior.prior_study_date), readable_date(prior.current_study_date)
    how = " (retrieved from the PACS and analysed for this report)" if prior.retrieved else ""
    rows = [["Region", f"Prior {before} (mL)", f"This study {now} (mL)", "Change (mL)", "Change"]]
    for region in SEGMENTS:
        change = prior.regions.get(region.key)
        if change is None:
            continue
        percent = f"{change.change_percent:+.1f} %" if change.change_percent is not None else "new"
        rows.append(
            [
                f"{region.label} ({region.key})",
                f"{change.previous_ml:.2f}",
                f"{change.current_ml:.2f}",
                f"{change.change_ml:+.2f}",
                percent,
            ]
        )
    story: list[Flowable] = [
        Paragraph("Follow-up", heading),
        Paragraph(
            f"Compared with the prior study of {_escape(before)}{how}, Study Instance UID "
            f"{_escape(prior.prior_study_instance_uid)}.",
            body,
        ),
        _table(rows),
    ]
    if prior.other_priors:
        older = ", ".join(readable_date(d) for d in prior.other_priors.values())
        story.append(Paragraph(f"Older prior studies: {_escape(older)}.", body))
    return story


def _series_and_models(analysis: Analysis, heading: ParagraphStyle) -> list[Flowable]:
    findings = analysis.findings
    series_rows = [["Role", "Series Instance UID", "Why this series"]]
    series_rows += [
        [c.role, c.series_instance_uid, "; ".join(c.reasons)] for c in findings.selected
    ]
    series_rows += [[role, "missing", "no series of this contrast"] for role in findings.missing]
    series_rows += [["not used", uid, why] for uid, why in sorted(findings.rejected.items())]
    model_rows = [["Task", "Model", "Version", "SHA-256"]]
    model_rows += [
        [task, m.name, m.version, m.sha256[:16] + "…"]
        for task, m in sorted(findings.models.items())
    ]
    uids = [(row, 1) for row, cells in enumerate(series_rows) if row and cells[1] != "missing"]
    return [
        Paragraph("Series", heading),
        _table(series_rows, [22 * mm, 70 * mm, 78 * mm], uids),
        Paragraph("Models", heading),
        _table(model_rows),
        Paragraph(f"{MODEL_NAME} {SOFTWARE_VERSION}", _styles()["BodyText"]),
    ]


def _key_images(
    analysis: Analysis, source_datasets: Sequence[Dataset], heading: ParagraphStyle
) -> list[Flowable]:
    """The Grad-CAM of the assigned class and the largest tumour extent; none without a tumour."""
    if not tumour_found(analysis.findings):
        return []
    cells: list[list[Flowable]] = [[], []]
    caption = _styles()["BodyText"]
    grad_cam = analysis.grad_cam
    if grad_cam is not None and grad_cam.label == assigned_class(analysis.findings):
        cells[0].append(_image(overlay_png(grad_cam)))
        cells[1].append(
            Paragraph(
                f"Grad-CAM for class {_escape(grad_cam.label)} ({grad_cam.series_role}, axial "
                f"plane {grad_cam.plane_index}); red: regions that drove the decision.",
                caption,
            )
        )
    masks = analysis.masks
    index = largest_tumour_frame(masks) if masks is not None else None
    if masks is not None and index is not None:
        cells[0].append(_image(outline_png(masks, index, source_datasets)))
        cells[1].append(
            Paragraph(
                f"Largest tumour extent on the {masks.reference_role} series "
                f"({_frame_name(masks, index, source_datasets)}); green: whole tumour, yellow: "
                "tumour core, red: enhancing tumour.",
                caption,
            )
        )
    if not cells[0]:
        return []
    images = Table(cells, hAlign="LEFT", style=TableStyle([_TABLE_FONT]))
    return [KeepTogether([Paragraph("Key images", heading), images])]


def _frame_name(masks: RegionMasks, index: int, source_datasets: Sequence[Dataset]) -> str:
    """How a reader finds the frame in a viewer: its image number or frame number."""
    ref = masks.frames[index]
    if ref.frame_number is not None:
        return f"frame {ref.frame_number}"
    source = next(ds for ds in source_datasets if ds.SOPInstanceUID == ref.sop_instance_uid)
    return f"image {source.get('InstanceNumber', index + 1)}"


def _banner(text: str, body: ParagraphStyle) -> Table:
    """White bold text wrapped inside a dark red box the width of the page's frame."""
    style = ParagraphStyle("banner", parent=body, textColor=colors.white, fontName=FONT_BOLD)
    banner = Table([[Paragraph(_escape(text), style)]], colWidths=["100%"])
    banner.setStyle(
        TableStyle(
            [
                _TABLE_FONT,
                ("BACKGROUND", (0, 0), (-1, -1), colors.darkred),
                ("TOPPADDING", (0, 0), (-1, -1), 4),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
            ]
        )
    )
    return banner


def render_pdf(
    analysis: Analysis, source_datasets: Sequence[Dataset], settings: ResultSettings
) -> bytes:
    """The report as PDF bytes.

    Parameters
    ----------
    source_datasets
        A series of the study: patient and study identifiers come from its first dataset, and the
        outline key image from its frames (the reference series when there are masks).
    """
    if not source_datasets:
        raise ValueError("no source datasets to take the patient and study from")
    styles = _styles()
    heading, body = styles["Heading2"], styles["BodyText"]
    patient = _patient_rows(source_datasets[0])
    uid_row = next(n for n, (name, _) in enumerate(patient) if name == "Study Instance UID")
    story: list[Flowable] = [
        Paragraph(DOCUMENT_TITLE, styles["Title"]),
        _banner(DISCLAIMER, body),
        Spacer(1, 4 * mm),
        _table(patient, [45 * mm, 125 * mm], [(uid_row, 1)]),
        *_findings(analysis, heading, body),
        *_follow_up(analysis, heading, body),
        *_key_images(analysis, source_datasets, heading),
        *_series_and_models(analysis, heading),
    ]
    footer = f"{DISCLAIMER}  {settings.manufacturer} / {settings.station_name}"

    footer_lines = simpleSplit(footer, FONT, _FOOTER_POINTS, A4[0] - 50 * mm)

    def on_page(canvas: Canvas, document: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont(FONT, _FOOTER_POINTS)
        for n, line in enumerate(reversed(footer_lines)):  # upwards from the bottom line
            canvas.drawString(15 * mm, 10 * mm + n * _FOOTER_POINTS * 1.2, line)
        canvas.drawRightString(A4[0] - 15 * mm, 10 * mm, f"Page {document.page}")
        canvas.restoreState()

    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=18 * mm,
        initialFontName=FONT,  # else every page declares a Helvetica it never uses
        title=DOCUMENT_TITLE,
        author=settings.manufacturer,
        subject=f"Study {source_datasets[0].get('StudyInstanceUID', '')}",
        creator=f"{MODEL_NAME} {SOFTWARE_VERSION}",
    )
    document.build(story, onFirstPage=on_page, onLaterPages=on_page)
    return buffer.getvalue()


def build_pdf_object(
    analysis: Analysis,
    source_datasets: Sequence[Dataset],
    settings: ResultSettings,
    series_number: int,
    document: bytes | None = None,
) -> Dataset:
    """The report as an Encapsulated PDF Storage instance in the source study.

    Parameters
    ----------
    document
        The PDF to encapsulate; rendered with :func:`render_pdf` when not given.
    """
    if not source_datasets:
        raise ValueError("no source datasets to take the patient and study from")
    pdf = document if document is not None else render_pdf(analysis, source_datasets, settings)
    source = source_datasets[0]
    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid(settings)
    copy_patient_study(source, ds)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        ds.setdefault(keyword, "")  # Type 2 in the Patient module
    for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID"):
        ds.setdefault(keyword, "")
    ds.setdefault("AccessionNumber", "")
    # Encapsulated Document Series, General Equipment, SC Equipment
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = new_uid(settings)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Manufacturer = settings.manufacturer
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = SOFTWARE_VERSION
    stamp_equipment(ds, settings)
    ds.ConversionType = WORKSTATION
    # Encapsulated Document
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = ds.SeriesDate, ds.SeriesTime
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the document shows patient identifiers
    ds.DocumentTitle = DOCUMENT_TITLE
    concept = Dataset()
    concept.CodeValue = DIAGNOSTIC_IMAGING_REPORT.value
    concept.CodingSchemeDesignator = DIAGNOSTIC_IMAGING_REPORT.scheme_designator
    concept.CodeMeaning = DIAGNOSTIC_IMAGING_REPORT.meaning
    ds.ConceptNameCodeSequence = [concept]
    ds.SourceInstanceSequence = [_reference(s) for s in source_datasets]
    ds.MIMETypeOfEncapsulatedDocument = PDF_MIME_TYPE
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)  # OB values have even length
    return ds


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item
