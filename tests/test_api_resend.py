"""``POST /api/studies/{uid}/resend``: what a destination never received is sent, or the
answer says why nothing was."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from neurogate.db.models import Export
from neurogate.settings import ExportSettings, PacsDestination, Settings
from tests.test_api_support import add_study, add_user, api_settings, running_app, sessions_of

STUDY = "1.2.826.0.1.3680043.8.498.77"


def _with_destinations(settings: Settings, *names: str) -> Settings:
    destinations = [
        PacsDestination(name=n, ae_title=n.upper(), host="127.0.0.1", port=104) for n in names
    ]
    return settings.model_copy(update={"export": ExportSettings(destinations=destinations)})


def test_a_destination_added_after_the_analysis_gets_the_results(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = _with_destinations(api_settings(tmp_path, sqlite_url), "pacs", "archive", "new")
    with running_app(settings) as client:
        add_study(
            client,
            STUDY,
            patient_id="P1",
            analysis="completed",
            exports={"pacs": "sent", "archive": "failed"},
        )
        staff = add_user(client, "clin", "clinician")

        first = client.post(f"/api/studies/{STUDY}/resend", headers=staff).json()
        again = client.post(f"/api/studies/{STUDY}/resend", headers=staff).json()

        with sessions_of(client)() as session:
            exports = {e.destination: e.status for e in session.scalars(select(Export))}
    assert (first["requeued"], first["added"], first["reason"]) == (1, 1, None)
    assert exports == {"pacs": "sent", "archive": "pending", "new": "pending"}
    assert (again["requeued"], again["added"]) == (0, 0)
    assert again["reason"] == (
        "nothing failed and every destination has the results: 1 exports sent, 2 pending"
    )


def test_resend_says_why_nothing_was_queued(tmp_path: Path, sqlite_url: str) -> None:
    without = api_settings(tmp_path / "a", sqlite_url)
    with running_app(without) as client:
        add_study(client, STUDY, patient_id="P1", analysis="completed", exports={"pacs": "sent"})
        staff = add_user(client, "clin", "clinician")
        body = client.post(f"/api/studies/{STUDY}/resend", headers=staff).json()
    assert body["reason"] == (
        "no export destinations are configured (NEUROGATE_EXPORT__DESTINATIONS)"
    )


def test_resend_of_a_study_without_results_says_so(tmp_path: Path, sqlite_url: str) -> None:
    settings = _with_destinations(api_settings(tmp_path, sqlite_url), "pacs")
    with running_app(settings) as client:
        add_study(client, STUDY, patient_id="P1", analysis="running")
        staff = add_user(client, "clin", "clinician")
        body = client.post(f"/api/studies/{STUDY}/resend", headers=staff).json()
    assert (body["requeued"], body["added"]) == (0, 0)
    assert body["reason"] == "the study has no result objects yet (no finished analysis)"
