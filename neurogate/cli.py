"""``neurogate``: the node's command line, and the one place that knows every service.

Services are imported inside their subcommand, so ``neurogate db upgrade`` never loads pynetdicom
and ``neurogate listener`` never loads the models.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from neurogate.preflight import InvalidSettings, Problem, load_settings
from neurogate.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from inference_worker.pipeline import Models

log = logging.getLogger("neurogate")

EX_FAILURE = 1
EX_CONFIG = 78  # sysexits.h: configuration error


class CommandFailed(Exception):
    """A command cannot do what was asked; its message is the one line the operator sees."""


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def _configure_logging(settings: Settings) -> None:
    from neurogate.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)


def _prepare(settings: Settings) -> None:
    _configure_logging(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)


def _database(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    from neurogate.db import create_db_engine, session_factory, upgrade_to_head

    if settings.db_auto_migrate:
        upgrade_to_head(settings.sqlalchemy_url)
    engine = create_db_engine(settings.sqlalchemy_url)
    return engine, session_factory(engine)


def _existing_database(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    """The node's database for a command that reads state: never created, never migrated."""
    from neurogate.db import session_factory
    from neurogate.db.existing import DatabaseUnavailable, describe, open_existing

    try:
        engine = open_existing(settings.sqlalchemy_url)
    except DatabaseUnavailable as exc:
        where = ""
        if settings.database_url is None:
            where = f" (NEUROGATE_DATA_DIR={settings.data_dir}, working directory {Path.cwd()})"
        raise CommandFailed(f"{exc}{where}") from exc
    print(f"database: {describe(settings.sqlalchemy_url)}", file=sys.stderr)
    return engine, session_factory(engine)


def service_problems(settings: Settings, names: Sequence[str]) -> list[Problem]:
    """What would stop the named services once started, found before anything heavy starts."""
    problems: list[Problem] = []
    if "api" in names and settings.profile == "production":
        from api.security import TokenIssuer

        try:
            TokenIssuer.from_settings(settings)
        except ValueError as exc:
            variable = "NEUROGATE_API__JWT_SECRET"
            problems.append(Problem(variable, str(exc).removeprefix(variable).lstrip(": ")))
    ports = {
        "listener": ("LISTENER__PORT", settings.listener.host, settings.listener.port),
        "api": ("API__PORT", settings.api.host, settings.api.port),
    }
    for service, (variable, host, port) in ports.items():
        taken = _cannot_listen(host, port) if service in names else None
        if taken:
            problems.append(Problem(f"NEUROGATE_{variable}", taken))
    if "listener" in names:
        if settings.listener.engine == "fast":
            from dicom_listener.engines import fast_unavailable

            reason = fast_unavailable()
            if reason is not None:
                problems.append(Problem("NEUROGATE_LISTENER__ENGINE", reason))
        for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            problems += _missing_file(f"LISTENER__{name}", getattr(settings.listener, name))
    if "worker" in names:
        for task in ("detection", "classification", "segmentation"):
            problems += _missing_file(f"MODELS__{task}", getattr(settings.models, task))
        for i, destination in enumerate(settings.export.destinations):
            for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
                path = getattr(destination, name, None)  # STOW-RS: a CA only
                if path is not None and not path.is_file():
                    problems.append(
                        Problem(
                            "NEUROGATE_EXPORT__DESTINATIONS", f"entry {i}, {name}: no file {path}"
                        )
                    )
    if "worker" in names:
        from inference_worker.routing import RoutingRulesError, load_routing_rules

        try:
            load_routing_rules(settings)
        except RoutingRulesError as exc:
            problems.append(Problem("NEUROGATE_ROUTING__RULES_FILE", str(exc)))
        for i, webhook in enumerate(settings.notify.webhooks):
            if webhook.tls_ca_file is not None and not webhook.tls_ca_file.is_file():
                problems.append(
                    Problem(
                        "NEUROGATE_NOTIFY__WEBHOOKS",
                        f"entry {i}, tls_ca_file: no file {webhook.tls_ca_file}",
                    )
                )
    for directory, (variable, why) in written_directories(settings, names).items():
        if not _can_write(directory):
            problems.append(Problem(variable, f"{directory} is not writable ({why})"))
    return problems


def written_directories(settings: Settings, names: Sequence[str]) -> dict[Path, tuple[str, str]]:
    """The directories the named services write, with the variable that places each and why.

    A container with a read-only root filesystem needs a writable mount at each of these
    (tests/test_deploy.py checks the manifests against it).
    """
    written: dict[Path, tuple[str, str]] = {}
    if names:  # every service; `db upgrade` writes the database only
        written[settings.storage_root] = ("NEUROGATE_STORAGE_DIR", "received instances, results")
    if settings.database_url is None:
        database = Path(settings.sqlalchemy_url.removeprefix("sqlite:///")).parent
        written.setdefault(database, ("NEUROGATE_DATA_DIR", "the embedded SQLite database"))
    if settings.bus.backend == "embedded":
        variable = (
            "NEUROGATE_BUS__EMBEDDED_PATH" if settings.bus.embedded_path else "NEUROGATE_DATA_DIR"
        )
        written.setdefault(settings.embedded_bus_path.parent, (variable, "the embedded bus"))
    if "worker" in names:  # inference_worker.service.heartbeat_path
        written.setdefault(
            settings.data_dir.resolve(), ("NEUROGATE_DATA_DIR", "the worker's heartbeat")
        )
    return written


def _cannot_listen(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now (in use, privileged); None: it can."""
    import socket

    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _missing_file(setting: str, path: Path | None) -> list[Problem]:
    if path is None or path.is_file():
        return []
    return [Problem(f"NEUROGATE_{setting.upper()}", f"no file {path}")]


def _can_write(directory: Path) -> bool:
    """Whether this process can write in ``directory``, or create it in its nearest parent."""
    existing = directory.resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def _load_models(settings: Settings) -> Models:
    from inference_worker.pipeline import Models
    from models.registry import Task, manifest_for

    configured = settings.models.by_task()
    try:  # each 2D model passes its start-up check here (models.byo.check)
        return Models.load_all(
            {Task(name): manifest_for(Task(name), path) for name, path in configured.items()}
        )
    except (OSError, ValueError) as exc:
        raise CommandFailed(f"models: {exc}") from exc


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

    engine, sessions = _existing_database(settings)
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
    if not folder.exists():
        raise CommandFailed(f"analyze: {folder} does not exist")
    if not folder.is_dir():
        raise CommandFailed(f"analyze: {folder} is not a folder (give the study's folder)")
    if not any(p.is_file() for p in folder.rglob("*")):
        raise CommandFailed(f"analyze: {folder} holds no files")
    _configure_logging(settings)
    from inference_worker.pipeline import analyse, scan_folder

    try:
        study = scan_folder(folder)
        analysis = analyse(study, _load_models(settings), budget=settings.decode_budget)
    except (ValueError, OSError) as exc:  # the study cannot be analysed (the pipeline says why)
        raise CommandFailed(f"analyze: {folder}: {exc}") from exc
    print(analysis.findings.model_dump_json(indent=2))
    return 0


def cmd_create_admin(settings: Settings, username: str, password_stdin: bool) -> int:
    """Add an admin account to the node's (existing) database."""
    from api.bootstrap import create_admin

    engine, sessions = _existing_database(settings)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {username}: ")
        if getpass.getpass("again: ") != password:
            engine.dispose()
            raise CommandFailed("users create-admin: the passwords differ")
    try:
        with sessions.begin() as session:
            create_admin(session, username=username, password=password)
    except ValueError as exc:
        raise CommandFailed(f"users create-admin: {exc}") from exc
    finally:
        engine.dispose()
    print(f"admin {username!r} created; sign in at the API (POST /api/auth/login)")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Make a synthetic study, send it to the running node, say where its results show up."""
    import time

    from neurogate import demo

    # The demo says itself why it could not reach the node; pynetdicom's errors would repeat it.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    started = time.monotonic()
    out: Path = args.out or settings.data_dir / "demo"
    host = args.host or demo.reachable(settings.listener.host)
    port = args.port or settings.listener.port
    called_ae = args.called_ae or settings.listener.ae_title
    try:
        demo.check_node(host=host, port=port, called_ae=called_ae)
        print(f"making a synthetic {args.tumour} study ({args.voxel_mm:g} mm) under {out} ...")
        folder = demo.make_study(
            out, seed=args.seed, tumour_type=args.tumour, voxel_mm=args.voxel_mm
        )
        made = time.monotonic()
        sent = demo.send_study(folder, host=host, port=port, called_ae=called_ae)
    except demo.DemoFailed as exc:
        raise CommandFailed(f"demo: {exc}") from exc
    print(
        f"made in {made - started:.1f} s; sent {sent.instances - sent.refused} of "
        f"{sent.instances} instances ({sent.series} series) to {called_ae}@{host}:{port} in "
        f"{time.monotonic() - made:.1f} s; study {sent.study_instance_uid}"
    )
    if sent.refused:
        print(f"the node refused {sent.refused} instances: its log says why")
    print("where to look:")
    print("\n".join(demo.where_to_look(settings, sent.study_instance_uid)))
    if args.wait <= 0:
        return 0
    return _wait_for_demo(settings, sent.study_instance_uid, args.wait, started)


def _wait_for_demo(settings: Settings, study_uid: str, timeout_s: float, started: float) -> int:
    import time

    from sqlalchemy import select

    from neurogate import demo
    from neurogate.db.models import Analysis

    try:
        engine, sessions = _existing_database(settings)
    except CommandFailed as exc:
        print(f"not waiting for the findings: {exc}")
        return 0

    def latest() -> tuple[str, dict[str, object] | None] | None:
        with sessions() as session:
            row = session.scalars(
                select(Analysis)
                .where(Analysis.study_instance_uid == study_uid)
                .order_by(Analysis.id.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            return row.status, row.findings if row.status == "completed" else {"error": row.error}

    print(f"waiting up to {timeout_s:.0f} s for the analysis (--wait 0: don't) ...")
    try:
        outcome = demo.wait_for_analysis(latest, timeout_s=timeout_s)
    finally:
        engine.dispose()
    elapsed = time.monotonic() - started
    if outcome is None:
        raise CommandFailed(
            f"demo: no finished analysis after {timeout_s:.0f} s; is a worker running? "
            "(`neurogate studies` shows whether the study is complete)"
        )
    status, findings = outcome
    if status == "failed":
        raise CommandFailed(f"demo: the analysis failed: {(findings or {}).get('error')}")
    print(f"findings {elapsed:.1f} s after the demo started:")
    print("\n".join(demo.summary(findings or {})))
    return 0


def cmd_models_add(args: argparse.Namespace) -> int:
    """Inspect a model file, check it, write its manifest (with the SHA-256); print it."""
    import json

    from models.byo.inspect import inspect, manifest_data, to_toml, written_manifest
    from models.registry import Activation, Preprocessing, Task, load

    path: Path = args.file
    if not path.is_file():
        raise CommandFailed(f"models add: no file {path}")
    out: Path = args.out or path.with_suffix(".toml")
    shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else None
    architecture = json.loads(args.architecture) if args.architecture else None
    if architecture is not None and not isinstance(architecture, dict):
        architecture = {"name": str(architecture)}
    try:
        inferred = inspect(path, shape, architecture)
        print(
            f"inferred: {inferred.framework.value}, input {inferred.input_shape} "
            f"({inferred.layout.value}), {inferred.outputs} outputs, last convolution "
            f"{inferred.gradcam_layer!r}, ends in {inferred.ends_in.value}",
            file=sys.stderr,
        )
        data = manifest_data(
            path,
            inferred,
            task=Task(args.task),
            labels=[v.strip() for v in args.labels.split(",") if v.strip()],
            preprocessing=Preprocessing(args.preprocessing),
            name=args.name or path.stem,
            version=args.version,
            output=Activation(args.output) if args.output else None,
            architecture=architecture,
            manifest_dir=out.parent,
        )
        checked = load(written_manifest(data, out))
    except (OSError, ValueError) as exc:
        raise CommandFailed(f"models add: {exc}") from exc
    out.write_text(to_toml(data))
    print(to_toml(data), end="")
    print(
        f"wrote {out}; start-up check passed in {checked.check_seconds:.2f} s; use it with "
        f"NEUROGATE_MODELS__{args.task.upper()}={out.resolve()}",
        file=sys.stderr,
    )
    return 0


def cmd_models_check(manifest_path: Path, image: Path | None) -> int:
    """Run a manifest's start-up check, and classify ``image`` when given; print the result."""
    import time

    import numpy as np

    from models.predict import model_input
    from models.registry import SLICE_TASKS, ModelManifest, load

    started = time.perf_counter()
    try:
        manifest = ModelManifest.from_toml(manifest_path)
        model = load(manifest)
    except (OSError, ValueError) as exc:
        raise CommandFailed(f"models check: {exc}") from exc
    seconds = time.perf_counter() - started
    layer = getattr(model, "layer", None)
    check = getattr(model, "check_seconds", None)
    print(
        f"ok: {manifest.name} {manifest.version} ({manifest.task.value}, "
        f"{manifest.framework.value}) loaded and checked in {seconds:.2f} s"
        + (f" (check {check:.2f} s, Grad-CAM layer {layer!r})" if check is not None else "")
    )
    if image is None:
        return 0
    if manifest.task not in SLICE_TASKS:
        raise CommandFailed("models check: --image is for 2D models (detection, classification)")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as picture:
            grey = np.asarray(picture.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise CommandFailed(f"models check: {image}: not a readable picture ({exc})") from exc
    plane = grey if manifest.takes_pictures else (grey / 255.0).astype(np.float32)
    probabilities = model.predict(model_input(plane[None], manifest))[0]
    ranked = sorted(zip(manifest.labels, probabilities, strict=True), key=lambda kv: -kv[1])
    print(f"{image.name}: " + ", ".join(f"{label} {p:.4f}" for label, p in ranked))
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
    sub.add_parser("studies", help="list the received studies (from an existing database)")
    analyze = sub.add_parser("analyze", help="analyse a folder of one DICOM study; print JSON")
    analyze.add_argument("path", type=Path)
    users = sub.add_parser("users", help="accounts of the API")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    create_admin = users_sub.add_parser(
        "create-admin", help="add an admin account to the node's database (asks the password)"
    )
    create_admin.add_argument("username")
    create_admin.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    demo = sub.add_parser(
        "demo",
        help="send a synthetic study to the running node and wait for its findings",
        description="Make a synthetic brain-MR study (four series), send it to the running "
        "node with C-STORE inside an MPPS step (as a scanner does), print where its results "
        "show up and wait for the findings. Needs the `synthetic` extra (scripts/setup).",
    )
    demo.add_argument("--host", help="the node's address (default: from the settings)")
    demo.add_argument("--port", type=int, help="its DICOM port (default: LISTENER__PORT)")
    demo.add_argument("--called-ae", help="its AE title (default: LISTENER__AE_TITLE)")
    demo.add_argument(
        "--tumour",
        choices=["glioma", "meningioma", "pituitary", "none"],
        default="glioma",
        help="what the synthetic case shows (default: %(default)s)",
    )
    demo.add_argument("--seed", type=int, default=0, help="synthetic case seed (default: 0)")
    demo.add_argument(
        "--voxel-mm", type=float, default=2.0, help="resolution of the case (default: 2 mm)"
    )
    demo.add_argument("--out", type=Path, help="where to write the study (default: DATA_DIR/demo)")
    demo.add_argument(
        "--wait",
        type=float,
        default=300.0,
        help="seconds to wait for the findings in the node's database; 0: don't wait",
    )
    _models_parser(sub)
    return parser


def _models_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="bring your own model: write and check manifests")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    add = models_sub.add_parser(
        "add",
        help="inspect a model file, check it and write its manifest (with its SHA-256)",
        description="Infers the input shape, output count, last convolutional layer and "
        "whether the model ends in softmax; runs the start-up check; writes the manifest.",
    )
    add.add_argument("file", type=Path, help=".keras, .h5, .pth (with --architecture), .pt, .onnx")
    add.add_argument("--task", choices=["classification", "detection"], required=True)
    add.add_argument(
        "--labels", required=True, help="class names in the order of the outputs, comma-separated"
    )
    add.add_argument(
        "--preprocessing",
        required=True,
        choices=["raw", "unit", "tf", "caffe", "torch", "percentile", "percentile_255"],
        help="how the model's authors scaled pictures (models/MODEL_CARD.md)",
    )
    add.add_argument(
        "--output",
        choices=["softmax", "sigmoid", "none"],
        help="default: none when the model ends in softmax/sigmoid, else softmax (sigmoid for "
        "one output)",
    )
    add.add_argument("--input-shape", help="e.g. 3,224,224; needed for PyTorch files")
    add.add_argument(
        "--architecture",
        help='a state dict\'s architecture: JSON, e.g. \'{"name": "resnet18", "num_classes": 4}\'',
    )
    add.add_argument("--name", help="default: the file's stem")
    add.add_argument("--version", default="1", help="default: %(default)s")
    add.add_argument("--out", "-o", type=Path, help="default: FILE with the suffix .toml")
    check = models_sub.add_parser(
        "check", help="load a manifest's model and run its start-up check (and a sample image)"
    )
    check.add_argument("manifest", type=Path)
    check.add_argument("--image", type=Path, help="a PNG or JPEG to classify")


def _report(lines: Sequence[object], heading: str) -> None:
    print(f"neurogate: {heading}", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except InvalidSettings as exc:
        _report(exc.problems, "the settings are not valid (environment or .env):")
        return EX_CONFIG
    try:
        return _dispatch(settings, args)
    except CommandFailed as exc:
        print(f"neurogate: {exc}", file=sys.stderr)
        return EX_FAILURE


def _dispatch(settings: Settings, args: argparse.Namespace) -> int:
    if args.command in ("run", "listener", "worker", "api"):
        names = ("listener", "worker", "api") if args.command == "run" else (args.command,)
        problems = service_problems(settings, names)
        if problems:
            _report(problems, f"cannot start {args.command}:")
            return EX_CONFIG
        return cmd_services(settings, names)
    if args.command == "db":
        return cmd_db_upgrade(settings)
    if args.command == "studies":
        return cmd_studies(settings)
    if args.command == "analyze":
        return cmd_analyze(settings, args.path)
    if args.command == "users":
        return cmd_create_admin(settings, args.username, args.password_stdin)
    if args.command == "demo":
        return cmd_demo(settings, args)
    if args.command == "models":
        if args.models_command == "add":
            return cmd_models_add(args)
        return cmd_models_check(args.manifest, args.image)
    raise AssertionError(f"unhandled command {args.command}")
