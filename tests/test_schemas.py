"""Event contracts: one way to serialise, one way to parse, strict about everything else."""

from __future__ import annotations

import json

import pytest

from schemas import SeriesSummary, StudyReceived, parse_event


def _event(**overrides: object) -> StudyReceived:
    fields: dict[str, object] = {
        "study_instance_uid": "1.2.840.1",
        "revision": 1,
        "trigger": "quiet_period",
        "calling_ae_titles": ["SCANNER"],
        "called_ae_title": "NEUROGATE",
        "first_received_at": "2026-11-01T09:30:00Z",
        "last_received_at": "2026-11-01T09:31:00Z",
        "instance_count": 2,
        "path": "studies/1.2.840.1",
        "series": [
            SeriesSummary(
                series_instance_uid="1.2.840.1.1",
                modality="MR",
                sop_class_uids=["1.2.840.10008.5.1.4.1.1.4"],
                instance_count=2,
                path="studies/1.2.840.1/1.2.840.1.1",
            )
        ],
        **overrides,
    }
    return StudyReceived.model_validate(fields)


def test_round_trip() -> None:
    event = _event()
    assert parse_event(event.to_bytes()) == event
    assert json.loads(event.to_bytes())["schema_version"] == 1


@pytest.mark.parametrize(
    "change",
    [
        {"unexpected": 1},
        {"schema_version": 2},
        {"event_type": "study.deleted"},
        {"study_instance_uid": "1.2.x"},
        {"revision": 0},
        {"series": []},
    ],
)
def test_parse_rejects_what_the_contract_does_not_allow(change: dict[str, object]) -> None:
    wire = json.loads(_event().to_bytes())
    wire.update(change)
    with pytest.raises(ValueError):
        parse_event(json.dumps(wire))


def test_timestamps_must_carry_a_zone() -> None:
    with pytest.raises(ValueError):
        _event(first_received_at="2026-11-01T09:30:00")
