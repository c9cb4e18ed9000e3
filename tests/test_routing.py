"""Routing rules against real peers: storescu as the scanner, the listener, the bus, the API.

A CT study and a knee MR pushed to the node are recorded as not for this node, with the rule
that said so, and nobody analyses them; a brain MR is analysed; the API's study detail shows
each decision. A STAT study routed behind a routine backlog is analysed first. A rule's model
set and destinations decide which classifier runs and where results go. Bad rules stop the
worker at start with one line naming the rule and field.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage
from sqlalchemy import select

from inference_worker.pipeline import Models
from inference_worker.routing import (
    DEFAULT_RULES,
    ROUTER_GROUP,
    Router,
    RoutingRules,
    RoutingRulesError,
    SeriesFacts,
    StudyFacts,
    decide,
    load_routing_rules,
)
from inference_worker.service import ROUTED_TOPICS, WorkerService
from models.registry import Task, default_manifest, manifest_for
from models.synthetic.dicom import SyntheticStudy
from neurogate.bus import Bus, ensure_service_topics, open_bus
from neurogate.bus.runner import consume
from neurogate.db.models import Analysis, AnalysisStatus, Export, RoutingDecision
from neurogate.settings import (
    ExportSettings,
    PacsDestination,
    RoutingSettings,
    Settings,
)
from schemas.events import StudyReceived
from schemas.topics import Topic
from tests.conftest import Database, free_port, make_settings
from tests.dicomgen import write_mr_study
from tests.harness import running_listener, settings_env, storescu, wait_for
from tests.test_api_support import admin_headers, api_settings, running_app
from tests.test_worker import _stored_event

REPO = Path(__file__).resolve().parents[1]
MR = "1.2.840.10008.5.1.4.1.1.4"
NO_MODELS = Models({}, {})  # every study here fails before a model runs (6 slices: no series)
FINISHED = (AnalysisStatus.COMPLETED, AnalysisStatus.FAILED)


def _rewrite(files: list[Path], **attributes: Any) -> None:
    """Set DICOM attributes in every file (a CT: Modality and SOP class too)."""
    for path in files:
        ds = dcmread(path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        if attributes.get("Modality") == "CT":
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.save_as(path, enforce_file_format=True)


def _decisions(database: Database) -> dict[str, RoutingDecision]:
    with database.sessions() as session:
        rows = session.scalars(select(RoutingDecision)).all()
        return {r.study_instance_uid: r for r in rows}


def _analyses(database: Database) -> list[Analysis]:
    with database.sessions() as session:
        return list(session.scalars(select(Analysis).order_by(Analysis.id)).all())


@contextmanager
def _worker(settings: Settings, database: Database, models: Models) -> Iterator[Bus]:
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    service = WorkerService(settings, database.sessions, bus, models)
    service.start()
    try:
        yield bus
    finally:
        service.stop()
        bus.close()


def test_a_ct_and_a_knee_mr_are_not_for_this_node_and_the_api_says_which_rule(
    tmp_path: Path, database: Database
) -> None:
    settings = api_settings(tmp_path / "node", database.url)
    ct = write_mr_study(tmp_path / "ct", series=1, seed=1)
    _rewrite(ct.files, Modality="CT", StudyDescription="CT HEAD", BodyPartExamined="HEAD")
    knee = write_mr_study(tmp_path / "knee", series=2, seed=2)
    _rewrite(knee.files, StudyDescription="MR KNEE LEFT", BodyPartExamined="KNEE")
    brain = write_mr_study(tmp_path / "brain", series=2, seed=3)

    with running_listener(settings) as listener, _worker(settings, database, NO_MODELS):
        for study in (ct, knee, brain):
            sent = storescu(listener.address[1], study.files, calling="MRI_1")
            assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(_decisions(database)) == 3, timeout=60)
        wait_for(lambda: any(a.status in FINISHED for a in _analyses(database)), timeout=60)

    decisions = _decisions(database)
    assert (decisions[ct.study_uid].action, decisions[ct.study_uid].rule) == ("ignore", "not-mr")
    assert (decisions[knee.study_uid].action, decisions[knee.study_uid].rule) == (
        "ignore",
        "other-body-part",
    )
    assert decisions[knee.study_uid].facts["series"][0]["body_part"] == "KNEE"
    assert decisions[knee.study_uid].facts["calling_ae"] == ["MRI_1"]
    assert decisions[brain.study_uid].rule == "brain-mr"
    assert decisions[brain.study_uid].priority == "routine"
    # Only the brain MR was analysed (it fails: 6-slice series qualify for no role).
    analysed = _analyses(database)
    assert [a.study_instance_uid for a in analysed] == [brain.study_uid]

    with running_app(settings) as client:
        headers = admin_headers(client)
        body = client.get(f"/api/studies/{ct.study_uid}", headers=headers).json()
        assert body["analysis"] is None
        assert body["routing"][0]["action"] == "ignore"
        assert body["routing"][0]["rule"] == "not-mr"
        assert body["routing"][0]["reason"] == "not for this node: rule 'not-mr'"
        assert body["routing"][0]["facts"]["series"][0]["modality"] == "CT"
        body = client.get(f"/api/studies/{brain.study_uid}", headers=headers).json()
        assert body["routing"][0]["rule"] == "brain-mr" and body["analysis"] is not None


def test_a_stat_study_behind_a_routine_backlog_is_analysed_first(
    tmp_path: Path, database: Database
) -> None:
    settings = make_settings(tmp_path / "node", database.url)
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    events = [_event(settings, tmp_path, f"routine{i}", "MR BRAIN W/WO CONTRAST") for i in range(3)]
    events.append(_event(settings, tmp_path, "stat", "MR BRAIN STAT"))
    publisher = bus.publisher()
    ensure_service_topics(bus, settings.bus, [Topic.STUDY_RECEIVED])
    for event in events:  # the STAT study arrives last
        publisher.publish(str(Topic.STUDY_RECEIVED), event.study_instance_uid, event.to_bytes())

    # The router runs ahead of the analyses: route the whole backlog before any is analysed.
    stop = threading.Event()
    router = Router(settings, load_routing_rules(settings), database.sessions, publisher, stop)
    consumer = bus.consumer([str(t) for t in ROUTED_TOPICS], ROUTER_GROUP)
    loop = threading.Thread(
        target=consume,
        args=(consumer, publisher, router.handle),
        kwargs={"stop": stop, "max_attempts": 3, "poll_timeout_s": 0.1},
        daemon=True,
    )
    loop.start()
    wait_for(lambda: len(_decisions(database)) == 4, timeout=60)
    stop.set()
    loop.join(timeout=30)
    consumer.close()
    publisher.close()
    bus.close()
    assert _decisions(database)[events[-1].study_instance_uid].priority == "stat"

    with _worker(settings, database, NO_MODELS):
        wait_for(
            lambda: len(a := _analyses(database)) == 4 and all(x.status in FINISHED for x in a),
            timeout=120,
        )
    order = [a.study_instance_uid for a in _analyses(database)]
    assert order == [events[-1].study_instance_uid, *(e.study_instance_uid for e in events[:3])]


def _event(settings: Settings, tmp_path: Path, name: str, description: str) -> StudyReceived:
    """A small MR study in the node's storage, as the listener stores it, and its event."""
    study = write_mr_study(tmp_path / name, series=1, seed=len(name))
    _rewrite(study.files, StudyDescription=description)
    root = settings.storage_root
    folder = root / "studies" / study.study_uid
    series = []
    for uid in study.series_uids:
        (folder / uid).mkdir(parents=True)
        for path in study.series_files(uid):
            (folder / uid / path.name).write_bytes(path.read_bytes())
        summary = {"series_instance_uid": uid, "modality": "MR", "instance_count": 6}
        series.append(
            {**summary, "sop_class_uids": [MR], "path": f"studies/{study.study_uid}/{uid}"}
        )
    now = dt.datetime.now(dt.UTC).isoformat()
    return StudyReceived.model_validate(
        {
            "study_instance_uid": study.study_uid,
            "revision": 1,
            "trigger": "quiet_period",
            "calling_ae_titles": ["MRI_1"],
            "called_ae_title": "NEUROGATE",
            "first_received_at": now,
            "last_received_at": now,
            "instance_count": 6,
            "path": f"studies/{study.study_uid}",
            "series": series,
        }
    )


# -- what a rule decides: models and destinations -----------------------------------------------


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_rules_model_set_and_destinations_decide_the_classifier_and_where_results_go(
    tmp_path: Path, database: Database, glioma: SyntheticStudy, models: Models
) -> None:
    shipped = default_manifest(Task.CLASSIFICATION)
    site = tmp_path / "site-classifier.toml"
    text = re.sub(r'(?m)^version = ".*"$', 'version = "site-1"', shipped.read_text())
    assert 'version = "site-1"' in text
    weights = (shipped.parent / "../classification/classifier.keras").resolve()
    site.write_text(text.replace('"../classification/classifier.keras"', f'"{weights}"'))
    rules = tmp_path / "rules.toml"
    rules.write_text(
        f"""
[[rule]]
name = "research"
action = "analyse"
models = "site"
destinations = ["archive"]
[rule.any_series]
modality = '^MR$'

[model_sets.site]
classification = "{site.name}"
"""
    )
    closed = [free_port(), free_port()]  # nobody listens: the exports stay pending
    destinations = [
        PacsDestination(name=name, ae_title="PACS", host="127.0.0.1", port=port)
        for name, port in zip(("pacs", "archive"), closed, strict=True)
    ]
    settings = make_settings(tmp_path / "node", database.url).model_copy(
        update={
            "export": ExportSettings(destinations=destinations),
            "routing": RoutingSettings(rules_file=rules),
        }
    )
    event = _stored_event(settings, glioma)
    with _worker(settings, database, models) as bus:
        publisher = bus.publisher()
        publisher.publish(str(Topic.STUDY_RECEIVED), event.study_instance_uid, event.to_bytes())
        publisher.close()
        wait_for(
            lambda: any(a.status in FINISHED for a in _analyses(database)),
            timeout=300,
            interval=0.5,
        )
    analysis = _analyses(database)[0]
    assert analysis.status == AnalysisStatus.COMPLETED, analysis.error
    assert analysis.findings is not None
    assert analysis.findings["models"]["classification"]["version"] == "site-1"
    assert (
        analysis.findings["models"]["detection"]["version"] == manifest_for(Task.DETECTION).version
    )
    with database.sessions() as session:
        exports = session.scalars(select(Export)).all()
        assert exports and {e.destination for e in exports} == {"archive"}
    assert _decisions(database)[event.study_instance_uid].destinations == ["archive"]


# -- validation at start -------------------------------------------------------------------------


def _shipped() -> dict[str, Any]:
    with DEFAULT_RULES.open("rb") as fh:
        return tomllib.load(fh)


def _with(index: int, **changes: Any) -> dict[str, Any]:
    data = _shipped()
    data["rule"][index].update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(3, priority="asap"), "rule 4 ('stat'), priority: 'asap', expected 'stat'"),
        (_with(0, action="drop"), "rule 1 ('not-mr'), action: 'drop', expected"),
        (_with(3, study={"study_description": "(stat"}), "('stat'), study.study_description: invalid pattern"),  # noqa: E501
        (_with(1, any_series={"bodypart": "KNEE"}), "rule 2 ('other-body-part'), any_series.bodypart: unknown"),  # noqa: E501
        (_with(4, destinations=["nowhere"]), "destinations: ['nowhere'] not in NEUROGATE_EXPORT__DESTINATIONS"),  # noqa: E501
        (_with(4, models="research"), "rule 5 ('brain-mr'), models: no model set 'research'"),
        (_with(4, name="stat"), "rule 5: name 'stat' is used twice"),
        (_with(0, priority="stat"), "rule 1 ('not-mr'): an 'ignore' rule takes no priority"),
        (_with(2, colour="red"), "rule 3 ('other-region-by-description'): unknown keys ['colour']"),
        ({"rule": []}, "no [[rule]] tables"),
    ],
)  # fmt: skip
def test_invalid_rules_are_refused_with_one_line_naming_the_rule_and_field(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(RoutingRulesError) as refused:
        RoutingRules.from_toml(data, base=DEFAULT_RULES.parent, destinations=["pacs"])
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_worker_does_not_start_with_bad_rules_and_names_the_setting(
    tmp_path: Path, sqlite_url: str
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(DEFAULT_RULES.read_text().replace('priority = "stat"', 'priority = "asap"'))
    settings = make_settings(tmp_path / "node", sqlite_url).model_copy(
        update={"routing": RoutingSettings(rules_file=rules)}
    )
    env = {**settings_env(settings), "NEUROGATE_ROUTING__RULES_FILE": str(rules)}
    ran = subprocess.run(
        [sys.executable, "-m", "inference_worker"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert ran.returncode == 78, ran.stderr
    line = next(x for x in ran.stderr.splitlines() if "ROUTING" in x)
    assert line.strip().startswith("NEUROGATE_ROUTING__RULES_FILE: ")
    assert f"{rules}: rule 4 ('stat'), priority: 'asap'" in line
    assert "Traceback" not in ran.stderr


def test_the_shipped_rules_read_the_stored_headers() -> None:
    rules = RoutingRules.from_toml(_shipped(), base=DEFAULT_RULES.parent, destinations=[])
    cases = {
        "MR BRAIN STAT": ("stat", "analyse"),
        "MR BRAIN W/WO CONTRAST": ("brain-mr", "analyse"),
        "MR LUMBAR SPINE": ("other-region-by-description", "ignore"),
    }
    for description, (rule, action) in cases.items():
        facts = StudyFacts(study_description=description, series=(SeriesFacts("MR", "", "t1"),))
        decision = decide(rules, facts)
        assert (decision.rule, decision.action) == (rule, action), description
    nothing = decide(rules, StudyFacts(series=(SeriesFacts("MR", "", ""),)))
    assert nothing.rule == "brain-mr"
