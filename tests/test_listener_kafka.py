"""The listener on Kafka: a broker outage loses no event and acknowledges every instance."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from neurogate.bus import open_bus
from neurogate.db import create_db_engine, session_factory
from neurogate.db.models import OutboxEvent
from neurogate.settings import BusSettings
from tests.conftest import make_settings
from tests.dicomgen import write_mr_study
from tests.harness import event_reader, running_listener, storescu, wait_for
from tests.kafka_broker import TansuBroker

pytestmark = [pytest.mark.kafka, pytest.mark.dcmtk]


def _outbox(url: str) -> list[OutboxEvent]:
    engine = create_db_engine(url)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))
    finally:
        engine.dispose()


def test_broker_outage_keeps_events_until_the_broker_returns(
    tmp_path: Path, sqlite_url: str, tansu_broker: TansuBroker, kafka_settings: BusSettings
) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, bus=kafka_settings)
    study = write_mr_study(tmp_path / "scanner", series=2, slices=3)
    tansu_broker.stop()
    try:
        with running_listener(settings) as service:
            result = storescu(service.address[1], study.files)
            assert result.returncode == 0, result.stderr  # acknowledged while the bus is down
            (pending,) = wait_for(lambda: _outbox(sqlite_url))
            failures = service.relay.consecutive_failures
            wait_for(lambda: service.relay.consecutive_failures > failures)  # tried since
            assert _outbox(sqlite_url)[0].published_at is None

            tansu_broker.start()
            wait_for(lambda: _outbox(sqlite_url)[0].published_at is not None, timeout=60)
    finally:
        if not tansu_broker.running:
            tansu_broker.start()

    bus = open_bus(settings.bus, settings.embedded_bus_path)
    try:
        reader = event_reader(bus)
        (event,) = reader.wait(1, timeout=60)
        assert str(event.event_id) == pending.event_id
        assert event.study_instance_uid == study.study_uid
        assert event.instance_count == 6
    finally:
        reader.consumer.close()
        bus.close()
