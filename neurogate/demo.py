"""``neurogate demo``: a synthetic study sent to a running node, the way a scanner sends one.

The study comes from the synthetic generator (``models.synthetic``, the ``synthetic`` extra);
pynetdicom is the sender, so no DICOM toolkit is needed. Like a modality, the demo opens a
Modality Performed Procedure Step, sends the images and sets the step COMPLETED listing them,
so the node completes the study at once instead of after its quiet period.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from neurogate.settings import Settings

CALLING_AE_TITLE = "DEMO_SCANNER"
VERIFICATION = "1.2.840.10008.1.1"
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
STATUS_SUCCESS = 0x0000
INSTALL_HINT = (
    "neurogate demo needs the synthetic data generator (nibabel, nilearn): run scripts/setup, "
    "or .venv/bin/pip install -e '.[synthetic]'"
)


class DemoFailed(Exception):
    """The demo could not make or send its study; the message says what to do."""


@dataclass(frozen=True)
class SentStudy:
    study_instance_uid: str
    folder: Path
    instances: int
    series: int
    refused: int  # instances the node did not store (each logged by the node)


def make_study(folder: Path, *, seed: int, tumour_type: str, voxel_mm: float) -> Path:
    """Write a synthetic four-series MR study under ``folder``; the study's own folder."""
    try:
        from models.synthetic.case import generate_case
        from models.synthetic.dicom import write_dicom_study
    except ImportError as exc:
        raise DemoFailed(f"{INSTALL_HINT} ({exc})") from exc
    case = generate_case(seed, tumour_type, voxel_mm=voxel_mm)
    study_folder = folder / case.case_id
    write_dicom_study(case, study_folder, seed=seed)
    return study_folder


def send_study(
    folder: Path,
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = CALLING_AE_TITLE,
    timeout_s: float = 30.0,
) -> SentStudy:
    """C-STORE every DICOM file under ``folder`` inside one MPPS step, as a modality does.

    Raises
    ------
    DemoFailed
        When the node is not there, rejects the association or refuses the MPPS step.
    """
    files = sorted(p for p in folder.rglob("*.dcm") if p.is_file())
    headers = [dcmread(p, stop_before_pixels=True) for p in files]
    if not headers:
        raise DemoFailed(f"no DICOM files under {folder}")
    study_uid = str(headers[0].StudyInstanceUID)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sorted({str(h.SOPClassUID) for h in headers}):
        ae.add_requested_context(sop_class)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(MPPS_SOP_CLASS)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise DemoFailed(_not_established(assoc, host, port, called_ae))
    try:
        step_uid = _create_step(assoc, study_uid)
        refused = 0
        for path in files:
            status = assoc.send_c_store(path)
            if int(getattr(status, "Status", -1)) != STATUS_SUCCESS:
                refused += 1
        _complete_step(assoc, step_uid, headers)
    finally:
        assoc.release()
    return SentStudy(
        study_uid,
        folder,
        len(files),
        len({str(h.SeriesInstanceUID) for h in headers}),
        refused,
    )


def check_node(*, host: str, port: int, called_ae: str, timeout_s: float = 10.0) -> None:
    """C-ECHO the node before making a study for it.

    Raises
    ------
    DemoFailed
        When nothing answers or the node rejects the association.
    """
    ae = AE(ae_title=CALLING_AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise DemoFailed(_not_established(assoc, host, port, called_ae))
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if int(getattr(status, "Status", -1)) != STATUS_SUCCESS:
        raise DemoFailed(f"the node at {host}:{port} did not answer the C-ECHO")


def _not_established(assoc: Association, host: str, port: int, called_ae: str) -> str:
    if assoc.is_rejected:
        return (
            f"the node at {host}:{port} rejected the association to {called_ae!r} "
            "(its log says why: called AE title, calling AE title or association limit)"
        )
    return (
        f"no DICOM node answers at {host}:{port}: start one (./scripts/run, or "
        "`.venv/bin/neurogate run`) or give its address with --host/--port"
    )


def _create_step(assoc: Association, study_uid: str) -> str:
    step_uid = generate_uid()
    attributes = Dataset()
    scheduled = Dataset()
    scheduled.StudyInstanceUID = study_uid
    attributes.ScheduledStepAttributesSequence = [scheduled]
    attributes.PerformedProcedureStepStatus = "IN PROGRESS"
    attributes.PerformedProcedureStepStartDate = dt.date.today().strftime("%Y%m%d")
    attributes.Modality = "MR"
    status, _ = assoc.send_n_create(attributes, MPPS_SOP_CLASS, step_uid)
    if int(getattr(status, "Status", -1)) != STATUS_SUCCESS:
        raise DemoFailed("the node refused the demo's MPPS N-CREATE (its log says why)")
    return step_uid


def _complete_step(assoc: Association, step_uid: str, headers: Sequence[Dataset]) -> None:
    modifications = Dataset()
    modifications.PerformedProcedureStepStatus = "COMPLETED"
    performed = []
    for series_uid in dict.fromkeys(str(h.SeriesInstanceUID) for h in headers):
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        images = []
        for h in headers:
            if str(h.SeriesInstanceUID) == series_uid:
                image = Dataset()
                image.ReferencedSOPClassUID = h.SOPClassUID
                image.ReferencedSOPInstanceUID = h.SOPInstanceUID
                images.append(image)
        series.ReferencedImageSequence = images
        performed.append(series)
    modifications.PerformedSeriesSequence = performed
    status, _ = assoc.send_n_set(modifications, MPPS_SOP_CLASS, step_uid)
    if int(getattr(status, "Status", -1)) != STATUS_SUCCESS:
        raise DemoFailed("the node refused the demo's MPPS N-SET COMPLETED (its log says why)")


def where_to_look(settings: Settings, study_uid: str) -> list[str]:
    """Lines telling the operator where the study and its results show up."""
    api = f"http://{reachable(settings.api.host)}:{settings.api.port}"
    lines = [
        "  .venv/bin/neurogate studies            (what arrived, from the node's database)",
        f"  {api}/api/studies/{study_uid}  (status, findings, exports; sign in first:",
        f"      curl -s -d username=... -d password=... {api}/api/auth/login)",
        f"  {api}/docs                       (the API, interactive)",
    ]
    for destination in settings.export.destinations:
        lines.append(
            f"  PACS {destination.name!r} ({destination.describe()}) receives the SEG, SR, "
            "Grad-CAM capture and PDF"
        )
    if not settings.export.destinations:
        lines.append(
            "  no PACS configured: set NEUROGATE_EXPORT__DESTINATIONS to have the results "
            "sent back (with docker compose: Orthanc at http://127.0.0.1:8042, OHIF at "
            "http://127.0.0.1:3000)"
        )
    return lines


def reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def wait_for_analysis(
    read_status: Callable[[], tuple[str, dict[str, object] | None] | None],
    *,
    timeout_s: float,
    poll_s: float = 1.0,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[str, dict[str, object] | None] | None:
    """Poll ``read_status`` until the analysis is completed or failed; ``None`` on timeout."""
    import time

    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    deadline = clock() + timeout_s
    while True:
        current = read_status()
        if current is not None and current[0] in ("completed", "failed"):
            return current
        if clock() >= deadline:
            return None
        sleep(poll_s)


def summary(findings: dict[str, object]) -> list[str]:
    """A few lines of what the analysis found (the full JSON is in the API)."""
    lines = []
    detection = findings.get("detection")
    if isinstance(detection, dict):
        lines.append(
            f"  detection: tumour {'yes' if detection['tumour'] else 'no'} "
            f"(p = {float(detection['probability']):.2f})"
        )
    classification = findings.get("classification")
    if isinstance(classification, dict):
        label = classification["label"]
        probability = float(classification["probabilities"].get(label, 0.0))
        lines.append(f"  classification: {label} (p = {probability:.2f})")
    segmentation = findings.get("segmentation")
    if isinstance(segmentation, dict):
        volumes = ", ".join(f"{k} {float(v):.1f} mL" for k, v in segmentation["volumes_ml"].items())
        lines.append(f"  volumes: {volumes}")
    skipped = findings.get("skipped")
    if isinstance(skipped, dict):
        lines.extend(f"  {stage} skipped: {why}" for stage, why in skipped.items())
    return lines
