"""Scale-out benchmark: studies/hour with 1 and with 2 worker processes in one consumer group.

A real Kafka-protocol broker (tansu, as in the tests) and PostgreSQL; each worker is a
``neurogate worker`` process. The same studies are announced once per phase (new events, so
new analyses); throughput is counted from the first analysis started to the last finished, so
model loading and the group join do not count. On a machine with few cores the second worker
competes for the same CPUs: the ratio says how the design scales, the cores say how far.

    .venv/bin/python bench/scale_out.py --studies 6
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from inference_worker.service import CONSUMED_TOPICS, PUBLISHED_TOPICS  # noqa: E402
from models.synthetic import generate_case  # noqa: E402
from models.synthetic.dicom import write_dicom_study  # noqa: E402
from neurogate.bus import TopicSpec, open_bus  # noqa: E402
from neurogate.db import create_db_engine, session_factory, upgrade_to_head  # noqa: E402
from neurogate.db.models import Analysis, AnalysisStatus  # noqa: E402
from neurogate.settings import BusSettings  # noqa: E402
from schemas.events import CompletionTrigger, SeriesSummary, StudyReceived  # noqa: E402
from schemas.topics import Topic, dead_letter_topic  # noqa: E402
from tests.kafka_broker import TansuBroker  # noqa: E402

POSTGRES = os.environ.get("NEUROGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
PARTITIONS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="neurogate-scale-"))
    storage = work / "storage"
    database = f"neurogate_bench_{uuid.uuid4().hex[:8]}"
    _create_database(database)
    url = f"{POSTGRES.replace('postgresql://', 'postgresql+psycopg2://')}/{database}"
    upgrade_to_head(url)
    broker = TansuBroker(work / "tansu.log")
    broker.start()
    bus_settings = BusSettings(
        backend="kafka",
        kafka_bootstrap_servers=[broker.bootstrap],
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=1000,
        topic_partitions=PARTITIONS,
    )
    bus = open_bus(bus_settings, work / "unused.sqlite")
    bus.ensure_topics(
        TopicSpec(name, PARTITIONS)
        for topic in (*CONSUMED_TOPICS, *PUBLISHED_TOPICS)
        for name in (str(topic), dead_letter_topic(topic))
    )
    studies = [_stored_study(storage, n) for n in range(args.studies)]
    engine = create_db_engine(url)
    sessions = session_factory(engine)
    results = []
    try:
        for count in (int(n) for n in args.workers.split(",")):
            procs = [_worker(work, storage, url, broker.bootstrap, i) for i in range(count)]
            time.sleep(15)  # models load and the group forms before the work arrives
            publisher = bus.publisher()
            events = [_event(uid, path, series) for uid, path, series in studies]
            for event in events:
                publisher.publish(Topic.STUDY_RECEIVED, event.study_instance_uid, event.to_bytes())
            publisher.close()
            ids = [str(e.event_id) for e in events]
            while True:
                with sessions() as session:
                    done = session.scalar(
                        select(func.count())
                        .select_from(Analysis)
                        .where(
                            Analysis.request_event_id.in_(ids),
                            Analysis.status.in_([AnalysisStatus.COMPLETED, AnalysisStatus.FAILED]),
                        )
                    )
                if done == len(ids):
                    break
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a worker exited; see {work}/worker-*.log")
                time.sleep(1)
            with sessions() as session:
                rows = session.scalars(
                    select(Analysis).where(Analysis.request_event_id.in_(ids))
                ).all()
                first = min(r.started_at for r in rows if r.started_at)
                last = max(r.finished_at for r in rows if r.finished_at)
                workers_used = len({r.worker for r in rows})
                failed = sum(r.status == AnalysisStatus.FAILED for r in rows)
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(60)
            span = (last - first).total_seconds()
            results.append((count, workers_used, len(ids), failed, span, len(ids) / span * 3600))
            print(f"{count} worker(s): {span:.1f} s", file=sys.stderr)
    finally:
        bus.close()
        broker.stop()
        engine.dispose()
        _drop_database(database)
    print(f"\nScale-out, {args.studies} studies per phase, {os.cpu_count()} CPUs, "
          f"{PARTITIONS} partitions\n")  # fmt: skip
    print(f"{'workers':>8}{'active':>8}{'studies':>9}{'failed':>8}{'span s':>9}{'studies/h':>11}"
          f"{'ratio':>7}")  # fmt: skip
    for count, active, n, failed, span, rate in results:
        ratio = rate / results[0][5]
        print(f"{count:>8}{active:>8}{n:>9}{failed:>8}{span:>9.1f}{rate:>11.0f}{ratio:>7.2f}")


def _stored_study(storage: Path, n: int) -> tuple[str, str, list[SeriesSummary]]:
    case = generate_case(
        910000 + n, ("glioma", "meningioma", "pituitary", "none")[n % 4], voxel_mm=2.0
    )
    study = write_dicom_study(case, storage / "studies" / f"s{n}", seed=n)
    series = [
        SeriesSummary(
            series_instance_uid=s.series_instance_uid,
            modality="MR",
            sop_class_uids=["1.2.840.10008.5.1.4.1.1.4"],
            instance_count=len(s.files),
            path=str(s.files[0].parent.relative_to(storage)),
        )
        for s in study.series.values()
    ]
    return study.study_instance_uid, f"studies/s{n}", series


def _event(uid: str, path: str, series: list[SeriesSummary]) -> StudyReceived:
    now = dt.datetime.now(dt.UTC)
    return StudyReceived(
        study_instance_uid=uid,
        revision=1,
        trigger=CompletionTrigger.QUIET_PERIOD,
        calling_ae_titles=["BENCH"],
        called_ae_title="NEUROGATE",
        first_received_at=now,
        last_received_at=now,
        instance_count=sum(s.instance_count for s in series),
        path=path,
        series=series,
    )


def _worker(work: Path, storage: Path, url: str, bootstrap: str, index: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROGATE_")}
    env.update(
        NEUROGATE_DATA_DIR=str(work / f"worker-{index}"),
        NEUROGATE_STORAGE_DIR=str(storage),
        NEUROGATE_DATABASE_URL=url,
        NEUROGATE_DB_AUTO_MIGRATE="false",
        NEUROGATE_BUS__BACKEND="kafka",
        NEUROGATE_BUS__KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        NEUROGATE_BUS__KAFKA_SESSION_TIMEOUT_MS="6000",
        NEUROGATE_BUS__KAFKA_HEARTBEAT_INTERVAL_MS="1000",
        NEUROGATE_BUS__TOPIC_PARTITIONS=str(PARTITIONS),
    )
    log = (work / f"worker-{index}.log").open("ab")
    return subprocess.Popen(
        [str(REPO / ".venv/bin/neurogate"), "worker"], env=env, stdout=log, stderr=log
    )


def _create_database(name: str) -> None:
    conn = psycopg2.connect(f"{POSTGRES}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def _drop_database(name: str) -> None:
    conn = psycopg2.connect(f"{POSTGRES}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


if __name__ == "__main__":
    main()
