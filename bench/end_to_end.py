"""End-to-end benchmark: last instance acknowledged → SEG and SR stored in the PACS.

Runs the node as ``neurogate run`` does (listener and worker in one process, embedded bus,
SQLite) with a real Orthanc as the PACS. Each round generates a four-series brain MR study
(2D and 3D series as scanners send them), pushes it with dcmtk's storescu, and times, from the
moment storescu returns (every instance acknowledged): the quiet period and hand-over to the
worker, each pipeline stage, result-object encoding, and export until Orthanc holds the SEG and
the SR. Prints the median of each over the rounds.

    .venv/bin/python bench/end_to_end.py --studies 3 --quiet-seconds 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import select  # noqa: E402

from inference_worker.pipeline import Models  # noqa: E402
from inference_worker.service import WorkerService  # noqa: E402
from models.registry import Task, manifest_for  # noqa: E402
from models.synthetic import generate_case  # noqa: E402
from models.synthetic.acquisition import SeriesProtocol  # noqa: E402
from models.synthetic.dicom import ScannerProfile, write_dicom_study  # noqa: E402
from neurogate.bus import open_bus  # noqa: E402
from neurogate.db import create_db_engine, session_factory  # noqa: E402
from neurogate.db.models import Analysis, Export, ExportStatus, ResultObject  # noqa: E402
from neurogate.settings import ExportSettings, PacsDestination  # noqa: E402
from tests.conftest import free_port, make_settings  # noqa: E402
from tests.harness import running_listener  # noqa: E402
from tests.orthanc import AE_TITLE, OrthancServer  # noqa: E402

PROFILE = ScannerProfile(
    vendor="siemens",
    field_strength=3.0,
    protocols={
        "t1": SeriesProtocol("t1", "sagittal", in_plane_mm=1.0, slice_mm=1.0, three_d=True),
        "t1ce": SeriesProtocol("t1ce", "axial", in_plane_mm=1.0, slice_mm=1.0, three_d=True),
        "t2": SeriesProtocol("t2", "axial", tilt_deg=10.0, in_plane_mm=0.5, slice_mm=5.0),
        "flair": SeriesProtocol("flair", "axial", in_plane_mm=1.0, slice_mm=4.0),
    },
)
STAGES = (
    "select_and_load",
    "detection",
    "classification",
    "grad_cam",
    "segmentation",
    "masks_to_source",
    "result_objects",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--quiet-seconds", type=float, default=5.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="neurogate-e2e-"))
    orthanc = OrthancServer(work / "orthanc", free_port(), free_port())
    orthanc.start()
    settings = make_settings(
        work / "node",
        f"sqlite:///{work / 'node.sqlite'}",
        study_quiet_seconds=args.quiet_seconds,
        completion_check_seconds=0.1,
    )
    pacs = PacsDestination(
        name="pacs", ae_title=AE_TITLE, host="127.0.0.1", port=orthanc.dicom_port
    )
    settings = settings.model_copy(update={"export": ExportSettings(destinations=[pacs])})
    models = Models.load_all({task: manifest_for(task) for task in Task})
    rows: list[dict[str, float]] = []
    try:
        with running_listener(settings) as listener:
            engine = create_db_engine(settings.sqlalchemy_url)
            sessions = session_factory(engine)
            bus = open_bus(settings.bus, settings.embedded_bus_path)
            worker = WorkerService(settings, sessions, bus, models)
            worker.start()
            try:
                for n in range(args.studies):
                    tumour = ("glioma", "meningioma", "pituitary")[n % 3]
                    case = generate_case(900000 + n, tumour, voxel_mm=1.0)
                    study = write_dicom_study(case, work / f"study{n}", seed=n, profile=PROFILE)
                    files = [str(f) for s in study.series.values() for f in s.files]
                    subprocess.run(
                        ["storescu", "-aet", "BENCH", "-aec", "NEUROGATE", "127.0.0.1",
                         str(listener.address[1]), *files],
                        check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"},
                    )  # fmt: skip
                    acknowledged = time.time()
                    uid = study.study_instance_uid
                    while not (orthanc.instances(uid, "SEG") and orthanc.instances(uid, "SR")):
                        time.sleep(0.2)
                    in_pacs = time.time()
                    rows.append(_timings(sessions, uid, acknowledged, in_pacs, len(files)))
                    print(f"study {n + 1}: {rows[-1]['total']:.1f} s", file=sys.stderr)
            finally:
                worker.stop()
                bus.close()
                engine.dispose()
    finally:
        orthanc.stop()
    _print(rows, args)


def _timings(
    sessions: object, uid: str, acknowledged: float, in_pacs: float, instances: int
) -> dict[str, float]:
    with sessions() as session:  # type: ignore[operator]
        analysis = session.scalars(select(Analysis).where(Analysis.study_instance_uid == uid)).one()
        seconds = analysis.findings["seconds"]
        sent = session.scalars(
            select(Export.sent_at)
            .join(ResultObject)
            .where(ResultObject.analysis_id == analysis.id, Export.status == ExportStatus.SENT)
        ).all()
        row = {
            "instances": float(instances),
            "quiet period + hand-over": analysis.created_at.timestamp() - acknowledged,
            **{stage: float(seconds.get(stage, 0.0)) for stage in STAGES},
            "worker total": (analysis.finished_at - analysis.started_at).total_seconds(),
            "export (until the last object is stored)": max(sent).timestamp()
            - analysis.finished_at.timestamp(),
            "total": in_pacs - acknowledged,
        }
    return row


def _print(rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    print(f"\nEnd to end, {len(rows)} studies, quiet period {args.quiet_seconds:g} s, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print(f"{'stage':<44}{'median s':>10}")
    for key in rows[0]:
        values = [r[key] for r in rows]
        fmt = f"{statistics.median(values):>10.0f}" if key == "instances" else (
            f"{statistics.median(values):>10.2f}")  # fmt: skip
        print(f"{key:<44}{fmt}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'peak memory, listener + worker process (MB)':<44}{peak_mb:>10.0f}")


if __name__ == "__main__":
    main()
