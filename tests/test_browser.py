"""The results as a reader sees them: OHIF on Orthanc's DICOMweb, in a real Chromium.

One synthetic glioma study goes to the PACS (Orthanc, as the scanner sends it) and through the
node (dcmtk's storescu to the listener, the worker, export back to Orthanc). OHIF's built app
(``@ohif/app``, installed by scripts/setup --test) is served same-origin with ``/dicom-web/``
proxied to Orthanc (tests/ohif.py), and Debian's Chromium, driven by Playwright, opens the SEG,
the SR, the PDF and the Grad-CAM capture, the API's ``/docs`` and the operator page. Screenshots
go to ``test-artifacts/browser/`` (``NEUROGATE_TEST_ARTIFACTS`` to put them elsewhere).
"""

from __future__ import annotations

import io
import os
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from sqlalchemy import select

from inference_worker.pipeline import Models
from inference_worker.results.seg import SEGMENTS
from inference_worker.service import WorkerService
from models.synthetic.dicom import SyntheticStudy
from neurogate.bus import open_bus
from neurogate.db import create_db_engine, session_factory
from neurogate.db.models import Analysis, Export, ExportStatus
from neurogate.settings import ExportSettings, PacsDestination, Settings
from tests.conftest import free_port, make_settings
from tests.harness import REPO, running_listener, storescu, wait_for
from tests.ohif import OhifServer, ohif_dist
from tests.orthanc import AE_TITLE, OrthancServer
from tests.test_api_support import ADMIN, api_settings, served

# The module fixture analyses a study (about 2 minutes here) before the first test runs.
pytestmark = [pytest.mark.browser, pytest.mark.dcmtk, pytest.mark.timeout(600)]

CHROMIUM = Path(os.environ.get("NEUROGATE_CHROMIUM", "/usr/lib/chromium/chromium"))
RESULT_MODALITIES = ("SEG", "SR", "OT", "DOC")
REFUSING_AE = "NOT-ORTHANC"  # the "archive" destination: Orthanc refuses this called AE title
LOAD_TIMEOUT_MS = 90_000
# Chromium draws with its software renderer here: a smaller window is a faster one.
VIEWPORT = {"width": 1280, "height": 800}
_SLICE_LABEL = re.compile(r"I:\s*(\d+)\s*\((\d+)/(\d+)\)")


def _artifacts() -> Path:
    folder = Path(os.environ.get("NEUROGATE_TEST_ARTIFACTS") or REPO / "test-artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Node:
    study: SyntheticStudy
    orthanc: OrthancServer
    ohif: OhifServer
    api_url: str
    findings: dict[str, Any]
    seg: Any  # the SEG as stored in the PACS (pydicom Dataset)


def _settings(root: Path, orthanc: OrthancServer) -> Settings:
    settings = make_settings(root / "node", f"sqlite:///{root / 'node.sqlite'}")
    pacs = PacsDestination(
        name="pacs", ae_title=AE_TITLE, host="127.0.0.1", port=orthanc.dicom_port
    )
    archive = PacsDestination(
        name="archive", ae_title=REFUSING_AE, host="127.0.0.1", port=orthanc.dicom_port
    )
    export = ExportSettings(destinations=[pacs, archive], max_attempts=1, backoff_seconds=0.05)
    return settings.model_copy(update={"export": export})


def _analyse(
    settings: Settings, study: SyntheticStudy, orthanc: OrthancServer, models: Models
) -> None:
    """The study through the listener and the worker until the PACS has every result and the
    refusing destination's exports are parked."""
    engine = create_db_engine(settings.sqlalchemy_url)
    sessions = session_factory(engine)

    def parked() -> bool:
        with sessions() as session:
            rows = session.scalars(select(Export).where(Export.destination == "archive")).all()
            return len(rows) == len(RESULT_MODALITIES) and all(
                r.status == ExportStatus.FAILED for r in rows
            )

    with running_listener(settings) as listener:
        bus = open_bus(settings.bus, settings.embedded_bus_path)
        worker = WorkerService(settings, sessions, bus, models)
        worker.start()
        try:
            sent = storescu(listener.address[1], study.files)
            assert sent.returncode == 0, sent.stderr
            for modality in RESULT_MODALITIES:
                orthanc.wait_for_instances(study.study_instance_uid, modality, 1, timeout=300)
            wait_for(parked, timeout=60, interval=0.2)
        finally:
            worker.stop()
            bus.close()
    engine.dispose()


def _stored(orthanc: OrthancServer, study_uid: str, modality: str) -> Any:
    found = orthanc.post(
        "/tools/find",
        {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": modality}},
    )
    with urllib.request.urlopen(f"{orthanc.url}/instances/{found[0]}/file", timeout=30) as r:
        return dcmread(io.BytesIO(r.read()))


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, models: Models, glioma: SyntheticStudy
) -> Iterator[Node]:
    """The study in the PACS with the node's results; Orthanc, OHIF and the API running."""
    dist = ohif_dist()
    root = tmp_path_factory.mktemp("browser")
    orthanc = OrthancServer(root / "orthanc", free_port(), free_port())
    orthanc.start()
    try:
        study = glioma
        # The scanner sends the study to the PACS too: the viewer shows the results on it.
        to_pacs = storescu(orthanc.dicom_port, study.files, called=AE_TITLE)
        assert to_pacs.returncode == 0, to_pacs.stderr
        settings = _settings(root, orthanc)
        _analyse(settings, study, orthanc, models)
        engine = create_db_engine(settings.sqlalchemy_url)
        with session_factory(engine)() as session:
            findings = session.scalars(select(Analysis)).one().findings
        engine.dispose()
        seg = _stored(orthanc, study.study_instance_uid, "SEG")
        ohif = OhifServer(dist, orthanc.url, free_port())
        ohif.start()
        try:
            with served(
                api_settings(root / "node", settings.sqlalchemy_url, ohif_url=ohif.url)
            ) as api:
                yield Node(study, orthanc, ohif, api, findings, seg)
        finally:
            ohif.stop()
    finally:
        orthanc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        raise RuntimeError(f"Chromium is not at {CHROMIUM}: run scripts/setup --test")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page; what the browser console said is kept for a failing test's report."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.console = console
    yield page
    context.close()


def _shot(page: Any, name: str) -> Path:
    path = _artifacts() / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _open_viewer(page: Any, node: Node) -> None:
    """OHIF on the study, its first-visit tour and banner put away."""
    page.goto(node.ohif.viewer_url(node.study.study_instance_uid))
    page.get_by_text("Skip all").click(timeout=LOAD_TIMEOUT_MS)
    page.get_by_text("Confirm and hide").click()


def _open_series(page: Any, description: str) -> None:
    exact = re.compile(f"^{re.escape(description)}$")
    page.locator('[data-cy="series-description-label"]', has_text=exact).first.dblclick()


def _slice(page: Any) -> int:
    """The Instance Number the viewport shows (its "I:52 (34/85)" label)."""
    label = page.locator('[data-cy="viewport-overlay-bottom-right"]').inner_text()
    match = _SLICE_LABEL.search(label)
    assert match, label
    return int(match.group(1))


def _go_to_instance(page: Any, number: int) -> None:
    """Step through the stack with the arrow keys until the viewport shows ``number``."""
    step = getattr(page, "slice_step", 0)  # how the Instance Number changes with one ArrowDown
    for _ in range(300):
        current = _slice(page)
        if current == number:
            return
        key = "ArrowDown" if step == 0 or (number - current) * step > 0 else "ArrowUp"
        page.keyboard.press(key)
        wait_for(lambda c=current: _slice(page) != c, timeout=10)
        if step == 0:
            step = page.slice_step = _slice(page) - current
    raise AssertionError(f"instance {number} not reached; at {_slice(page)}")


def _coloured_pixels(page: Any) -> int:
    """Pixels of the viewport's image that are coloured (overlay), not grey (MR) or text."""
    pane = page.locator('[data-cy="viewport-pane"]').first
    rgb = np.asarray(Image.open(io.BytesIO(pane.screenshot())).convert("RGB"), dtype=int)
    height, width = rgb.shape[:2]
    # Not the corner labels, nor the active viewport's (blue) border and the scroll bar.
    body = rgb[int(height * 0.15) : int(height * 0.9), int(width * 0.05) : int(width * 0.95)]
    saturation = body.max(axis=-1) - body.min(axis=-1)
    return int((saturation > 80).sum())


def _instance_numbers(files: list[Path]) -> dict[str, int]:
    """SOP Instance UID -> Instance Number of a series' files."""
    headers = (dcmread(f, stop_before_pixels=True) for f in files)
    return {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in headers}


def test_the_seg_lists_our_segments_and_lies_on_the_reference_series_at_the_largest_slice(
    node: Node, page: Any
) -> None:
    _open_viewer(page, node)
    _open_series(page, "NeuroGate tumour segmentation")
    page.get_by_role("button", name="Yes").click(timeout=LOAD_TIMEOUT_MS)
    rows = page.locator('[data-cy="data-row"]')
    if not rows.first.is_visible():
        page.locator('[data-cy="panelSegmentation-btn"]').click()
    rows.first.wait_for(timeout=LOAD_TIMEOUT_MS)
    listed = [
        (
            row.locator('[data-cy="data-row-title"]').inner_text().strip(),
            row.locator('[data-cy="data-row-colorhex"]').evaluate(
                "e => getComputedStyle(e).backgroundColor"
            ),
        )
        for row in rows.all()
    ]
    assert [label for label, _ in listed] == [region.label for region in SEGMENTS]
    for (_, shown), region in zip(listed, SEGMENTS, strict=True):
        colour = tuple(int(v) for v in re.findall(r"\d+", shown)[:3])
        assert np.abs(np.subtract(colour, region.colour)).max() <= 2, (region.label, shown)
    _shot(page, "seg-loaded")

    # On the reference series: the viewport shows the series the SEG references.
    reference_uid = str(node.seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    reference = next(
        s for s in node.study.series.values() if s.series_instance_uid == reference_uid
    )
    description = str(dcmread(reference.files[0], stop_before_pixels=True).SeriesDescription)
    top_left = page.locator('[data-cy="viewport-overlay-top-left"]').inner_text()
    assert description in top_left, top_left

    # Clicking a segment jumps to it; then to the slice with the largest whole-tumour area.
    page.locator('[data-cy="data-row-title"]', has_text=SEGMENTS[0].label).click()
    segmentation = node.findings["segmentation"]
    numbers = _instance_numbers(reference.files)
    stack = set(numbers.values())
    largest = numbers[segmentation["largest_tumour_sop_instance_uid"]]
    _go_to_instance(page, largest)
    page.wait_for_timeout(500)  # the overlay is drawn on the next animation frames
    at_largest = _coloured_pixels(page)
    _shot(page, "seg-largest-slice")
    areas = {numbers[uid]: area for uid, area in segmentation["slice_areas_mm2"].items()}
    assert max(areas, key=lambda n: areas[n]) == largest
    # Then the nearest slices, on the side of the stack's end, with much less tumour and none.
    above = sorted(n for n in stack if n > largest)
    smaller = next(n for n in above if areas.get(n, 0) < 0.6 * areas[largest])
    outside = next(n for n in above if n not in areas)
    shown = {}
    for number in (smaller, outside):
        _go_to_instance(page, number)
        page.wait_for_timeout(500)
        shown[number] = _coloured_pixels(page)
    assert at_largest > 2000, at_largest
    assert shown[smaller] < at_largest, (shown, at_largest)
    assert shown[outside] < 0.02 * at_largest, (shown, at_largest)


def test_the_sr_opens_on_the_key_image_with_our_outlines(node: Node, page: Any) -> None:
    """OHIF opens the SR on the image its planar groups reference and draws their outlines.

    It fails (TypeError, "Error Boundary") on a report with a measurement group that has no
    image coordinates: every group of ours has some (section 8.1.4 of the conformance).
    """
    _open_viewer(page, node)
    _open_series(page, "NeuroGate tumour report")

    def errors() -> list[str]:
        return [line for line in page.console if "Error Boundary" in line]

    reference_uid = str(node.seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    reference = next(
        s for s in node.study.series.values() if s.series_instance_uid == reference_uid
    )
    numbers = _instance_numbers(reference.files)
    key = numbers[node.findings["segmentation"]["largest_tumour_sop_instance_uid"]]
    label = page.locator('[data-cy="viewport-overlay-bottom-right"]')

    def on_key_image() -> bool:
        match = _SLICE_LABEL.search(label.inner_text()) if label.count() else None
        return bool(match) and int(match.group(1)) == key

    try:
        wait_for(lambda: errors() or on_key_image(), timeout=LOAD_TIMEOUT_MS / 1000)
        page.wait_for_timeout(1000)  # the outlines are drawn on the next animation frames
    finally:
        _shot(page, "sr")
        (_artifacts() / "sr-console.txt").write_text("\n".join(page.console))
    assert not errors(), errors()
    description = str(dcmread(reference.files[0], stop_before_pixels=True).SeriesDescription)
    assert description in page.locator('[data-cy="viewport-overlay-top-left"]').inner_text()
    # The outlines (OHIF draws SR annotations in yellow) and their labels, on a grey MR image.
    assert _coloured_pixels(page) > 500, _coloured_pixels(page)


def test_the_pdf_report_opens(node: Node, page: Any) -> None:
    _open_viewer(page, node)
    _open_series(page, "NeuroGate tumour report (PDF)")
    document = page.locator('object[type="application/pdf"][data^="blob:"]')
    document.wait_for(timeout=LOAD_TIMEOUT_MS)
    head = document.evaluate(
        "async e => new TextDecoder().decode("
        "(await (await fetch(e.data)).arrayBuffer()).slice(0, 5))"
    )
    assert head == "%PDF-"
    page.wait_for_timeout(3000)  # the PDF viewer draws its first page
    _shot(page, "pdf")


def test_the_grad_cam_capture_opens(node: Node, page: Any) -> None:
    _open_viewer(page, node)
    _open_series(page, "NeuroGate Grad-CAM")
    page.locator('[data-cy="viewport-overlay-top-left"]', has_text="NeuroGate Grad-CAM").wait_for(
        timeout=LOAD_TIMEOUT_MS
    )
    page.wait_for_timeout(1000)
    _shot(page, "grad-cam")
    assert _coloured_pixels(page) > 5000  # the heatmap's colours, not a grey image


def test_the_api_docs_render_the_operations_offline(node: Node, page: Any) -> None:
    outside: list[str] = []
    page.on(
        "request", lambda r: outside.append(r.url) if not r.url.startswith(node.api_url) else None
    )
    page.goto(f"{node.api_url}/docs")
    operations = page.locator(".opblock-summary-path")
    operations.first.wait_for(timeout=30_000)
    paths = set(operations.all_inner_texts())
    assert {"/api/studies", "/api/auth/login", "/api/studies/{study_uid}/resend"} <= {
        p.replace("\u200b", "") for p in paths
    }
    _shot(page, "docs")
    assert not outside, outside


def test_the_operator_page_shows_states_exports_and_re_sends_after_login(
    node: Node, page: Any
) -> None:
    uid = node.study.study_instance_uid
    page.goto(f"{node.api_url}/operator")
    page.fill('input[name="username"]', ADMIN[0])
    page.fill('input[name="password"]', "not-the-password")
    page.click('button[type="submit"]')
    page.locator("#login-error").filter(has_text=re.compile(".+")).wait_for()
    page.fill('input[name="password"]', ADMIN[1])
    page.click('button[type="submit"]')

    row = page.locator(f'tr[data-study="{uid}"]').first
    row.wait_for(timeout=30_000)
    assert row.get_attribute("data-state") == "done"
    assert "glioma" in row.locator(".findings").inner_text()
    assert "whole tumour" in row.locator(".findings").inner_text()
    assert row.locator(".progress").inner_text().startswith("100 %")
    pacs = row.locator('li[data-destination="pacs"]')
    archive = row.locator('li[data-destination="archive"]')
    assert pacs.get_attribute("data-status") == "sent"
    assert archive.get_attribute("data-status") == "failed"
    parked = page.locator(f'#parked tr[data-study="{uid}"]')
    assert parked.count() == len(RESULT_MODALITIES)
    assert "rejected" in parked.first.inner_text()
    link = row.locator("a.viewer")
    assert link.get_attribute("href") == node.ohif.viewer_url(uid)
    _shot(page, "operator")

    row.locator("button.resend").click()
    page.locator("#notice").filter(has_text="requeued").wait_for()
    assert f"{len(RESULT_MODALITIES)} parked export(s) requeued" in page.inner_text("#notice")
    page.locator(
        f'tr[data-study="{uid}"] li[data-destination="archive"][data-status="pending"]'
    ).wait_for()
    assert page.locator(f'#parked tr[data-study="{uid}"]').count() == 0
    _shot(page, "operator-after-resend")

    with page.context.expect_page() as opened:
        link.click()
    viewer = opened.value
    viewer.locator('[data-cy="series-description-label"]', has_text="NeuroGate Grad-CAM").wait_for(
        timeout=LOAD_TIMEOUT_MS
    )

    page.click("#logout")
    page.locator("#login").wait_for()
    assert page.locator("#board").is_hidden()


def test_the_operator_page_names_the_viewer_and_loads_nothing_from_elsewhere(
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from neurogate.settings import ApiSettings

    viewer = 'http://viewer.example:3000/ohif"><script>'
    settings = Settings(data_dir=tmp_path, api=ApiSettings(ohif_url=viewer))
    page = TestClient(create_app(settings, bcrypt_rounds=4)).get("/operator")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'content="http://viewer.example:3000/ohif&quot;&gt;&lt;script&gt;"' in page.text
    assert re.findall(r"https?://[^\s\"'&]+", page.text) == ["http://viewer.example:3000/ohif"]
    with pytest.raises(ValueError, match="ohif_url"):
        ApiSettings(ohif_url="javascript:alert(1)")
