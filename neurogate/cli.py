"""``neurogate``: the node's command line, and the one place that knows every service.

Services are imported inside their subcommand, so ``neurogate db upgrade`` never loads pynetdicom
and ``neurogate listener`` never loads the models.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from neurogate.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from inference_worker.pipeline import Models

log = logging.getLogger("neurogate")


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def _prepare(settings: Settings) -> None:
    from neurogate.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)


def _database(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    from neurogate.db import create_db_engine, session_factory, upgrade_to_head

    if settings.db_auto_migrate:
        upgrade_to_head(settings.sqlalchemy_url)
    engine = create_db_engine(settings.sqlalchemy_url)
    return engine, session_factory(engine)


def _load_models(settings: Settings) -> Models:
    from inference_worker.pipeline import Models
    from models.registry import Task, manifest_for

    configured = {
        Task.DETECTION: settings.models.detection,
        Task.CLASSIFICATION: settings.models.classification,
        Task.SEGMENTATION: settings.models.segmentation,
    }
    return Models.load_all({task: manifest_for(task, path) for task, path in configured.items()})


def cmd_services(settings: Settings, names: Sequence[str]) -> int:
    """Run the named services (listener, worker, api) in this process until SIGINT/SIGTERM."""
    from neurogate.bus import open_bus

    _prepare(settings)
    engine, sessions = _database(settings)
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    started: list[Service] = []
    try:
        if "worker" in names:
            from inference_worker.service import WorkerService

            log.info("loading models")
            started.append(WorkerService(settings, sessions, bus, _load_models(settings)))
            started[-1].start()
        if "listener" in names:
            from dicom_listener.service import ListenerService

            started.append(ListenerService(settings, sessions, bus))
            started[-1].start()
        if "api" in names:
            from api.server import ApiService

            started.append(ApiService(settings, sessions, bus))
            started[-1].start()
        _wait_for_signal()
    finally:
        for service in reversed(started):
            service.stop()
        bus.close()
        engine.dispose()
    return 0


def cmd_db_upgrade(settings: Settings) -> int:
    from neurogate.db import upgrade_to_head

    _prepare(settings)
    upgrade_to_head(settings.sqlalchemy_url)
    log.info("database is at the newest schema")
    return 0


def cmd_studies(settings: Settings) -> int:
    """Print the received studies, newest first (identifiers only, no patient names)."""
    from sqlalchemy import select

    from neurogate.db.models import Study

    _prepare(settings)
    engine, sessions = _database(settings)
    with sessions() as session:
        studies = session.scalars(select(Study).order_by(Study.last_received_at.desc())).all()
        print(f"{'STUDY INSTANCE UID':<64}  {'STATUS':<9}  REV  SERIES  INSTANCES  LAST RECEIVED")
        for s in studies:
            print(
                f"{s.study_instance_uid:<64}  {s.status:<9}  {s.revision:>3}  {len(s.series):>6}"
                f"  {s.instance_count:>9}  {s.last_received_at:%Y-%m-%d %H:%M:%S}"
            )
    engine.dispose()
    return 0


def cmd_analyze(settings: Settings, folder: Path) -> int:
    """Run the analysis pipeline on a folder holding one DICOM study; print the findings."""
    from inference_worker.pipeline import analyse, scan_folder

    _prepare(settings)
    analysis = analyse(scan_folder(folder), _load_models(settings), budget=settings.decode_budget)
    print(analysis.findings.model_dump_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurogate",
        description="NeuroGate: brain-MRI tumour AI as a DICOM node. Settings come from "
        "NEUROGATE_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the whole node in one process: listener, worker and API")
    sub.add_parser("listener", help="run the DICOM listener (C-STORE/C-ECHO/MPPS SCP)")
    sub.add_parser("worker", help="run an inference worker (consumer group member) and exporter")
    sub.add_parser("api", help="run the REST API")
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply the migrations up to the newest schema")
    sub.add_parser("studies", help="list the received studies")
    analyze = sub.add_parser("analyze", help="analyse a folder of one DICOM study; print JSON")
    analyze.add_argument("path", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    if args.command == "run":
        return cmd_services(settings, ("listener", "worker", "api"))
    if args.command in ("listener", "worker", "api"):
        return cmd_services(settings, (args.command,))
    if args.command == "db":
        return cmd_db_upgrade(settings)
    if args.command == "studies":
        return cmd_studies(settings)
    if args.command == "analyze":
        return cmd_analyze(settings, args.path)
    raise AssertionError(f"unhandled command {args.command}")
