"""One stored synthetic study through ``Worker.handle``: time per stage and files read.

Stores a four-series brain MR study (246 files) with the rows the listener commits on
completion, hands its ``StudyReceived`` to a worker (SQLite, no PACS) a few times and prints
the median of: the whole ``handle``, describing the study before analysis (``inventory``),
selecting and loading the series, writing the result objects, and the ``dcmread`` calls of
the worker's modules (header-only and full reads).

    .venv/bin/python bench/worker_study.py --rounds 3
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import select  # noqa: E402

from inference_worker import pipeline, service, volume  # noqa: E402
from inference_worker.pipeline import Models  # noqa: E402
from inference_worker.service import Worker  # noqa: E402
from models.registry import Task, manifest_for  # noqa: E402
from models.synthetic import generate_case  # noqa: E402
from models.synthetic.dicom import write_dicom_study  # noqa: E402
from neurogate.db import create_db_engine, session_factory, upgrade_to_head  # noqa: E402
from neurogate.db.models import Analysis  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.studies import PROFILE  # noqa: E402
from tests.test_worker import _message, _stored_event, record_listener_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    tmp = Path(tempfile.mkdtemp(prefix="ng-worker-bench-"))
    url = f"sqlite:///{tmp}/neurogate.sqlite"
    upgrade_to_head(url)
    sessions = session_factory(create_db_engine(url))
    settings = make_settings(tmp / "node", url)
    case = generate_case(810001, "glioma", voxel_mm=2.0)
    study = write_dicom_study(case, tmp / "src", seed=5, profile=PROFILE, patient_id="NG-B")
    event = _stored_event(settings, study)
    with sessions.begin() as session:
        record_listener_rows(session, event)
    reads: collections.Counter[str] = collections.Counter()
    for module in (pipeline, volume, service):
        read = module.dcmread

        def counted(*args: Any, _read: Any = read, **kwargs: Any) -> Any:
            reads["header_reads" if kwargs.get("stop_before_pixels") else "full_reads"] += 1
            return _read(*args, **kwargs)

        module.dcmread = counted  # type: ignore[attr-defined]
    timing: dict[str, float] = {}
    analyse, run = service.analyse, Worker._run

    def timed_analyse(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return analyse(*args, **kwargs)
        finally:
            timing["analyse"] = time.perf_counter() - started

    def timed_run(self: Worker, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return run(self, *args, **kwargs)
        finally:
            timing["run"] = time.perf_counter() - started

    service.analyse, Worker._run = timed_analyse, timed_run  # type: ignore[method-assign]
    models = Models.load_all({task: manifest_for(task) for task in Task})
    out: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(rounds):
        reads.clear()
        again = event.model_copy(update={"event_id": uuid.uuid4()})
        started = time.perf_counter()
        Worker(settings, sessions, models).handle(_message(again))
        out["handle"].append(time.perf_counter() - started)
        with sessions() as session:
            key = str(again.event_id)
            done = session.scalars(select(Analysis).where(Analysis.request_event_id == key)).one()
            assert done.status == "completed" and done.findings is not None, done.error
            for stage in ("select_and_load", "result_objects"):
                out[stage].append(done.findings["seconds"][stage])
        out["inventory"].append(timing["run"] - timing["analyse"])
        for kind in ("header_reads", "full_reads"):
            out[kind].append(reads[kind])
    print(f"{event.instance_count} files in {len(event.series)} series, {rounds} rounds")
    for name, values in out.items():
        each = [round(v, 3) for v in values]
        print(f"{name:>16}: median {statistics.median(values):8.3f}   {each}")


if __name__ == "__main__":
    main()
