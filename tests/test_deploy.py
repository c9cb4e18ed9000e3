"""The deployment files, checked by construction (no Docker engine or cluster needed).

docker-compose.yml, deploy/Dockerfile, .dockerignore, deploy/.env.example and deploy/k8s/ are
parsed and checked against the code they deploy: every ``NEUROGATE_*`` variable must be a field
of :class:`neurogate.settings.Settings` and its value must parse, the Kafka topics must be those
of :mod:`schemas.topics`, and docs/conformance.md must list exactly what the listener's AE
accepts. The container health probes (deploy/healthcheck.py) run against real in-process peers.
"""

from __future__ import annotations

import ast
import http.server
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from pydicom.uid import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from dicom_listener.scp import (
    ACCEPTED_TRANSFER_SYNTAXES,
    MODALITY_PERFORMED_PROCEDURE_STEP,
    VERIFICATION,
    build_ae,
)
from dicom_listener.status import Status
from inference_worker.service import HEARTBEAT_FILE
from neurogate.preflight import setting_names
from neurogate.settings import BusSettings, ListenerSettings, Settings
from schemas.topics import Topic, dead_letter_topic

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"
K8S = REPO / "deploy" / "k8s"
CONFORMANCE = REPO / "docs" / "conformance.md"

ONE_SHOT_SERVICES = {"kafka-init", "migrate"}
NEUROGATE_SERVICES = {"migrate", "listener", "api", "inference_worker"}
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}
# Keys whose whole value is a secret, and settings that carry one inside a larger value.
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE_KEY", re.IGNORECASE)
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
URL_USERINFO = re.compile(r"://([^/@]*):([^/@]*)@")
PLACEHOLDER_SECRET = "placeholder-secret"


def _load(module_path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_path.stem, module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load(REPO / "deploy" / "healthcheck.py")
requirements_helper = _load(REPO / "deploy" / "requirements.py")


# --- settings ----------------------------------------------------------------------------------


# Every variable Settings reads, NEUROGATE_X and NEUROGATE_GROUP__X (not a whole group as JSON:
# the deployment files set each setting on its own, as the README documents them).
SETTINGS_NAMES = setting_names(groups=False)


def interpolate(value: str) -> str:
    """``value`` as compose would pass it, with required variables set to a placeholder."""

    def substitute(match: re.Match[str]) -> str:
        _, operator, argument = match.groups()
        if operator in (":-", "-"):
            return argument
        return PLACEHOLDER_SECRET

    return INTERPOLATION.sub(substitute, value.replace("$$", "$"))


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process would build from exactly ``env`` (no .env file, no host vars)."""
    for name in list(os.environ):
        if name.upper().startswith("NEUROGATE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("NEUROGATE_"):
            monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def secret_parts(key: str, value: str) -> list[str]:
    """The parts of ``value`` that are secrets: the whole value of a password-like key, the
    password of a URL, the passwords of a JSON user map (Orthanc's REGISTERED_USERS)."""
    parts = []
    if SECRET_KEY.search(key):
        parts.append(value)
    masked, references = _mask(value)
    for match in URL_USERINFO.finditer(masked):
        parts.append(_unmask(match.group(2), references))
    if key.upper().endswith("REGISTERED_USERS"):
        parts.extend(_unmask(v, references) for v in json.loads(masked).values())
    return parts


def _mask(value: str) -> tuple[str, list[str]]:
    references: list[str] = []

    def keep(match: re.Match[str]) -> str:
        references.append(match.group(0))
        return f"\u27e6{len(references) - 1}\u27e7"  # ⟦n⟧: valid inside JSON strings and URLs

    return INTERPOLATION.sub(keep, value), references


def _unmask(value: str, references: list[str]) -> str:
    return re.sub("\u27e6(\\d+)\u27e7", lambda m: references[int(m.group(1))], value)


def is_required_reference(value: str) -> bool:
    """A single ``${VAR}`` / ``${VAR:?message}`` with no default: the secret must be given."""
    match = INTERPOLATION.fullmatch(value.strip())
    return match is not None and match.group(2) in (None, ":?", "?")


# --- docker-compose.yml ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert set(_services(compose)) == {
        "kafka",
        "kafka-init",
        "postgres",
        "orthanc",
        "ohif",
        "migrate",
        "listener",
        "api",
        "inference_worker",
    }


def test_long_running_services_have_healthchecks_and_restart_policies(
    compose: dict[str, Any],
) -> None:
    for name, service in _services(compose).items():
        if name in ONE_SHOT_SERVICES:
            assert service.get("restart") == "no", name
            assert "healthcheck" not in service, name
            continue
        assert service.get("restart") in RESTART_POLICIES, f"{name}: no restart policy"
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck without {key}"


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        if "build" in service:
            assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
            assert service["build"]["target"] in _dockerfile_stages(), name
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.search(r"\d", tag) and tag != "latest", f"{name}: {image}"


def test_neurogate_services_use_their_image_targets(compose: dict[str, Any]) -> None:
    targets = {n: s["build"]["target"] for n, s in _services(compose).items() if "build" in s}
    assert targets == {
        "migrate": "listener",
        "listener": "listener",
        "api": "api",
        "inference_worker": "worker",
    }
    commands = {n: _services(compose)[n]["command"] for n in targets}
    assert commands == {
        "migrate": ["neurogate", "db", "upgrade"],
        "listener": ["neurogate", "listener"],
        "api": ["neurogate", "api"],
        "inference_worker": ["neurogate", "worker"],
    }


def test_worker_is_scalable(compose: dict[str, Any]) -> None:
    worker = _services(compose)["inference_worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker


def test_services_start_after_migrations_and_topics(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name in NEUROGATE_SERVICES - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["kafka-init"] == {"condition": "service_completed_successfully"}, name
        env = _environment(services[name])
        assert env["NEUROGATE_DB_AUTO_MIGRATE"] == "false", f"{name} would race to migrate"
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["kafka-init"]["depends_on"]["kafka"] == {"condition": "service_healthy"}


def test_no_literal_secrets_in_compose(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in _services(compose).items():
        for key, value in _environment(service).items():
            for part in secret_parts(key, value):
                assert is_required_reference(part), f"{name}: {key} holds a literal secret"
                checked += 1
    # POSTGRES_PASSWORD, the database URL (x4), JWT secret, admin password, Orthanc (x3), OHIF
    assert checked >= 10


def test_secret_check_catches_literals() -> None:
    assert not is_required_reference("hunter2")
    assert not is_required_reference("${POSTGRES_PASSWORD:-hunter2}")
    assert is_required_reference("${POSTGRES_PASSWORD:?set it}")
    assert secret_parts("NEUROGATE_DATABASE_URL", "postgresql://u:hunter2@db/x") == ["hunter2"]
    assert secret_parts("X_REGISTERED_USERS", '{"a": "${P:?}"}') == ["${P:?}"]


def test_compose_neurogate_variables_are_settings(compose: dict[str, Any]) -> None:
    used = set()
    for service in _services(compose).values():
        for key, value in _environment(service).items():
            used |= {key} | {m.group(1) for m in INTERPOLATION.finditer(value)}
    neurogate = {name for name in used if name.startswith("NEUROGATE_")}
    assert neurogate, "no NEUROGATE_* variable found"
    assert neurogate <= SETTINGS_NAMES, f"not settings: {sorted(neurogate - SETTINGS_NAMES)}"


def test_settings_name_check_catches_typos() -> None:
    assert "NEUROGATE_LISTENER__AE_TITLE" in SETTINGS_NAMES
    assert "NEUROGATE_EXPORT__DESTINATIONS" in SETTINGS_NAMES
    assert "NEUROGATE_LISTENER__AE_TITEL" not in SETTINGS_NAMES
    assert "NEUROGATE_LISTENER" not in SETTINGS_NAMES


@pytest.mark.parametrize("name", sorted(NEUROGATE_SERVICES))
def test_compose_settings_parse(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: interpolate(v) for k, v in _environment(_services(compose)[name]).items()}
    settings = settings_from(env, monkeypatch)
    assert settings.profile == "production"
    assert settings.bus.backend == "kafka"
    assert settings.bus.kafka_bootstrap_servers == ["kafka:9092"]
    assert settings.sqlalchemy_url.startswith("postgresql+psycopg2://")
    assert f":{PLACEHOLDER_SECRET}@postgres:5432/" in settings.sqlalchemy_url
    [pacs] = settings.export.destinations
    assert (pacs.ae_title, pacs.host, pacs.port) == ("ORTHANC", "orthanc", 4242)
    assert settings.storage_dir == Path("/var/lib/neurogate/dicom")
    if name == "api":
        assert settings.api.jwt_secret is not None
        assert settings.api.admin_password is not None
        assert settings.api.host == "0.0.0.0"


def test_storage_volume_is_shared(compose: dict[str, Any]) -> None:
    mounts = {}
    for name in ("listener", "api", "inference_worker"):
        service = _services(compose)[name]
        storage = _environment(service)["NEUROGATE_STORAGE_DIR"]
        [volume] = [v for v in service["volumes"] if v.split(":")[1] == storage]
        mounts[name] = volume.split(":")[0]
    assert len(set(mounts.values())) == 1, mounts
    assert next(iter(mounts.values())) in compose["volumes"]


def test_kafka_init_creates_the_topics(compose: dict[str, Any]) -> None:
    init = _environment(_services(compose)["kafka-init"])
    expected = {name for t in Topic for name in (t.value, dead_letter_topic(t.value))}
    topics = init["TOPICS"].split()
    assert len(topics) == len(set(topics))
    assert set(topics) == expected
    assert int(init["PARTITIONS"]) == BusSettings().topic_partitions
    listener = _environment(_services(compose)["listener"])
    assert init["PARTITIONS"] == listener["NEUROGATE_BUS__TOPIC_PARTITIONS"]
    assert init["REPLICATION_FACTOR"] == listener["NEUROGATE_BUS__TOPIC_REPLICATION_FACTOR"]
    command = "\n".join(_services(compose)["kafka-init"]["command"])
    assert "$$TOPICS" in command and "--partitions" in command


def test_ohif_files_exist_and_point_at_orthanc(compose: dict[str, Any]) -> None:
    ohif = _services(compose)["ohif"]
    for volume in ohif["volumes"]:
        source = volume.split(":")[0]
        assert (REPO / source).is_file(), source
    config = (REPO / "deploy" / "ohif" / "app-config.js").read_text()
    assert "wadoRoot: '/dicom-web'" in config
    site = (REPO / "deploy" / "ohif" / "nginx.conf.template").read_text()
    assert "proxy_pass http://orthanc:8042/dicom-web/;" in site
    assert "limit_except GET" in site
    orthanc = _environment(_services(compose)["orthanc"])
    assert orthanc["ORTHANC__DICOM_AET"] == "ORTHANC"
    assert orthanc["ORTHANC__DICOM_PORT"] == "4242"
    assert orthanc["DICOM_WEB_PLUGIN_ENABLED"] == "true"


# --- deploy/.env.example -----------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            entries[key.strip()] = value.strip()
    return entries


def test_env_example_names_every_variable_compose_reads() -> None:
    text = COMPOSE.read_text().replace("$$", "")
    referenced = {m.group(1) for m in INTERPOLATION.finditer(text)}
    missing = referenced - set(_env_example())
    assert not missing, f"add to deploy/.env.example: {sorted(missing)}"


def test_env_example_holds_placeholders_not_secrets(compose: dict[str, Any]) -> None:
    entries = _env_example()
    required = {
        m.group(1)
        for m in INTERPOLATION.finditer(COMPOSE.read_text().replace("$$", ""))
        if m.group(2) in (":?", "?", None)
    }
    assert required >= {"POSTGRES_PASSWORD", "NEUROGATE_API__JWT_SECRET", "ORTHANC_PASSWORD"}
    for name in required:
        assert re.fullmatch(r"<[a-z0-9-]+>", entries[name]), f"{name}: not a placeholder"
    for name, value in entries.items():
        if SECRET_KEY.search(name):
            assert re.fullmatch(r"<[a-z0-9-]+>", value), f"{name}: not a placeholder"
    neurogate = {name for name in entries if name.startswith("NEUROGATE_")}
    assert neurogate <= SETTINGS_NAMES, f"not settings: {sorted(neurogate - SETTINGS_NAMES)}"


# --- deploy/Dockerfile -------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        yield keyword.upper(), args.strip()
        logical = ""


def dockerfile_stages() -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults, and the stages by name."""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            current = stages[name] = Stage(name, base)
        elif current is None and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            assert current is not None, f"{keyword} before FROM"
            current.instructions.append((keyword, rest))
    return args, stages


def _dockerfile_stages() -> dict[str, Stage]:
    return dockerfile_stages()[1]


def _ancestry(stages: dict[str, Stage], name: str) -> list[Stage]:
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def _last(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    for stage in _ancestry(stages, name):
        for kw, rest in reversed(stage.instructions):
            if kw == keyword:
                return rest
    return None


def test_dockerfile_base_image_is_pinned() -> None:
    _, stages = dockerfile_stages()
    external = {s.base for s in stages.values() if s.base not in stages}
    assert external, "no base image"
    for image in external:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name == "python", image
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), f"unpinned base image {image}"


@pytest.mark.parametrize(
    ("target", "port", "probe", "command"),
    [
        ("listener", "11112", "listener", ["neurogate", "listener"]),
        ("worker", None, "worker", ["neurogate", "worker"]),
        ("api", "8000", "api", ["neurogate", "api"]),
    ],
)
def test_dockerfile_targets(target: str, port: str | None, probe: str, command: list[str]) -> None:
    stages = _dockerfile_stages()
    user = _last(stages, target, "USER")
    assert user is not None and user.split(":")[0] not in ("root", "0"), f"{target} runs as root"
    health = _last(stages, target, "HEALTHCHECK")
    assert health is not None, f"{target}: no HEALTHCHECK"
    exec_form = json.loads(health[health.index("CMD") + 3 :])
    assert exec_form == ["python", "/app/deploy/healthcheck.py", probe]
    assert json.loads(_last(stages, target, "CMD") or "null") == command
    exposed = _last(stages, target, "EXPOSE") if port else None
    assert exposed == port
    for stage in _ancestry(stages, target):
        for keyword, rest in stage.instructions:
            if keyword in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
                assert not re.search(r"\b(curl|wget)\b", rest), f"{target}: downloads at run time"


def test_only_the_model_images_carry_the_networks() -> None:
    stages = _dockerfile_stages()
    ml_stages = {
        s.name
        for s in stages.values()
        if any("download.pytorch.org/whl/cpu" in rest for _, rest in s.instructions)
    }
    assert ml_stages == {"ml"}
    [install] = [r for k, r in stages["ml"].instructions if "whl/cpu" in r]
    assert "--index-url https://download.pytorch.org/whl/cpu" in install
    assert "torch.version.cuda is None" in install
    assert "ml" not in {s.name for s in _ancestry(stages, "listener")}
    assert "ml" in {s.name for s in _ancestry(stages, "worker")}
    assert "ml" in {s.name for s in _ancestry(stages, "api")}
    for target in ("worker", "api"):
        [copy_run] = [r for k, r in stages[target].instructions if k == "RUN"]
        assert "verify(ModelManifest.from_toml(default_manifest(t)))" in copy_run


def test_dockerfile_copy_sources_exist_and_env_names_are_settings() -> None:
    stages = _dockerfile_stages()
    copied = 0
    for stage in stages.values():
        for keyword, rest in stage.instructions:
            if keyword in ("COPY", "ADD"):
                assert keyword == "COPY", "ADD can fetch URLs; use COPY"
                words = [w for w in shlex.split(rest) if not w.startswith("--")]
                assert not rest.startswith("--from"), "no multi-stage COPY expected"
                for source in words[:-1]:
                    assert (REPO / source).exists(), f"COPY source missing: {source}"
                    copied += 1
            if keyword == "ENV":
                for pair in shlex.split(rest):
                    name = pair.partition("=")[0]
                    if name.startswith("NEUROGATE_"):
                        assert name in SETTINGS_NAMES, f"ENV {name} is not a setting"
    assert copied >= 3


def test_requirements_helper_follows_pyproject() -> None:
    pyproject = REPO / "pyproject.toml"
    core = requirements_helper.requirements(pyproject)
    assert "pynetdicom>=3.0,<4" in core  # a range; the image installs it under constraints.txt
    assert "pip install --constraint /tmp/build/constraints.txt" in DOCKERFILE.read_text()
    assert not any(requirements_helper.requirement_name(r) == "torch" for r in core)
    torch = requirements_helper.requirements(pyproject, "ml", only={"torch"})
    rest = requirements_helper.requirements(pyproject, "ml", skip={"torch"})
    assert [requirements_helper.requirement_name(r) for r in torch] == ["torch"]
    assert sorted(torch + rest) == sorted(requirements_helper.requirements(pyproject, "ml"))
    assert [requirements_helper.requirement_name(r) for r in rest] == ["tensorflow-cpu", "scipy"]


def _installed_requirements(target: str) -> set[str]:
    """The projects the ``target`` image installs: the requirement lists its stages print with
    deploy/requirements.py (core, or an extra of pyproject.toml), and what those require."""
    pyproject = REPO / "pyproject.toml"
    lines = []
    for stage in _ancestry(_dockerfile_stages(), target):
        for keyword, rest in stage.instructions:
            if keyword == "RUN":
                for extra in re.findall(r"requirements\.py(?: (?!-)(\S+))?", rest):
                    lines += requirements_helper.requirements(pyproject, extra or None)
    wanted = [requirements_helper.requirement_name(line) for line in lines]
    installed: set[str] = set()
    while wanted:  # the requirements' own requirements, as installed here
        name = wanted.pop()
        if name in installed:
            continue
        installed.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirements_helper.requirement_name(requirement.name))
    return installed


def _third_party_imports(folder: Path) -> set[str]:
    """Top-level modules the Python files in ``folder`` import, other than the standard
    library's and the project's own."""
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    own = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    modules = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    return {
        m for m in modules if m not in sys.stdlib_module_names and m not in own | {"__future__"}
    }


@pytest.mark.parametrize("target", ["worker", "api"])
def test_the_model_images_install_what_bring_your_own_models_import(target: str) -> None:
    """A site's own Keras, PyTorch, TorchScript, ONNX or MONAI-bundle model (models/byo) runs in
    the images that run models: every module models/byo imports comes with what they install."""
    installed = _installed_requirements(target)
    distributions = importlib.metadata.packages_distributions()
    imported = _third_party_imports(REPO / "models" / "byo")
    assert {"torch", "keras", "onnx", "onnxruntime"} <= imported
    missing = {
        module
        for module in imported
        if not {requirements_helper.requirement_name(d) for d in distributions[module]} & installed
    }
    assert not missing, f"{target} image lacks what models/byo imports: {sorted(missing)}"
    assert not {"torch", "onnxruntime"} & _installed_requirements("listener")


# --- .dockerignore -----------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_build_context(path: str) -> bool:
    """Whether .dockerignore lets ``path`` (relative to the repository root) into the context.

    Docker's rules: patterns in order, the last match wins, ``!`` re-includes, and a pattern
    that matches a folder matches everything below it.
    """
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _ignore_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negate
    return included


def test_build_context_holds_the_runtime_sources() -> None:
    required = [
        "pyproject.toml",
        "README.md",
        "deploy/healthcheck.py",
        "deploy/requirements.py",
        "inference_worker/series_rules.toml",
    ]
    for package in ("neurogate", "schemas", "dicom_listener", "inference_worker", "models"):
        required += [
            p.relative_to(REPO).as_posix()
            for p in (REPO / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and "logs" not in p.parts
        ]
    for manifest in (REPO / "models" / "manifests").glob("*.toml"):
        weights = re.search(r'^file = "(.+)"$', manifest.read_text(), re.MULTILINE)
        assert weights is not None
        required.append((manifest.parent / weights.group(1)).resolve().relative_to(REPO).as_posix())
    missing = [p for p in required if not in_build_context(p)]
    assert not missing, f"left out of the build context: {missing}"
    assert "models/segmentation/weights.pth" in required


def test_build_context_leaves_out_secrets_and_state() -> None:
    for path in (
        ".env",
        "deploy/.env.example",
        ".venv/bin/python",
        "var/neurogate.sqlite",
        "var/dicom/studies/1/2/3.dcm",
        ".git/HEAD",
        "tests/test_deploy.py",
        "docker-compose.yml",
        "neurogate/__pycache__/cli.cpython-311.pyc",
        "neurogate.egg-info/PKG-INFO",
        "models/training/logs/run.log",
        "neurogate/.env",
    ):
        assert not in_build_context(path), path


def test_build_context_whitelists_every_package() -> None:
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in include:
        package = pattern.rstrip("*")
        assert in_build_context(f"{package}/__init__.py"), package


# --- deploy/k8s --------------------------------------------------------------------------------


def _manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        for p in sorted(K8S.glob("*.yaml"))
    }


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for docs in _manifests().values() for d in docs if d["kind"] == kind]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def test_k8s_manifests_parse() -> None:
    manifests = _manifests()
    assert set(manifests) >= {
        "namespace.yaml",
        "configmap.yaml",
        "secret.example.yaml",
        "storage.yaml",
        "migrate-job.yaml",
        "listener.yaml",
        "api.yaml",
        "worker.yaml",
        "kustomization.yaml",
    }
    for name, docs in manifests.items():
        assert docs, name
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), name
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], name
            if doc["kind"] not in ("Namespace", "Kustomization"):
                assert doc["metadata"]["namespace"] == "neurogate", name


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    [kustomization] = _by_kind("Kustomization")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}


def test_k8s_deployments_have_probes_resources_and_run_as_non_root() -> None:
    deployments = {d["metadata"]["name"]: d for d in _by_kind("Deployment")}
    assert set(deployments) == {"neurogate-listener", "neurogate-api", "neurogate-worker"}
    for name, deployment in [*deployments.items(), ("job", _by_kind("Job")[0])]:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        # Service links would give NEUROGATE_API_SERVICE_HOST and the like: no settings, refused.
        assert pod["enableServiceLinks"] is False, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        if deployment["kind"] == "Deployment":
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), name
        for container in pod["containers"]:
            if deployment["kind"] == "Deployment":
                assert "readinessProbe" in container and "livenessProbe" in container, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), name
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: read-only root needs a writable /tmp"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                command = container.get(probe, {}).get("exec", {}).get("command")
                if command:
                    assert command[:2] == ["python", "/app/deploy/healthcheck.py"], name
                    assert command[2] in ("listener", "api", "worker", "alive"), name
    assert deployments["neurogate-listener"]["spec"]["replicas"] == 1
    assert deployments["neurogate-listener"]["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_worker_autoscaling_fits_the_partitions() -> None:
    [hpa] = _by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "neurogate-worker"
    [config] = _by_kind("ConfigMap")
    partitions = int(config["data"]["NEUROGATE_BUS__TOPIC_PARTITIONS"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions


def test_k8s_storage_is_shared_read_write_many() -> None:
    [claim] = _by_kind("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    [config] = _by_kind("ConfigMap")
    storage = config["data"]["NEUROGATE_STORAGE_DIR"]
    for deployment in _by_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        [mount] = [
            m for m in _containers(deployment)[0]["volumeMounts"] if m["mountPath"] == storage
        ]
        claim_name = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim_name == claim["metadata"]["name"]


def test_k8s_settings_are_settings_and_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    [config] = _by_kind("ConfigMap")
    [secret] = _by_kind("Secret")
    names = set(config["data"]) | set(secret["stringData"])
    for workload in [*_by_kind("Deployment"), *_by_kind("Job")]:
        for container in _containers(workload):
            for ref in container.get("envFrom", []):
                assert ref["configMapRef"]["name"] == config["metadata"]["name"]
            for entry in container.get("env", []):
                names.add(entry["name"])
                secret_ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if secret_ref:
                    assert secret_ref["name"] == secret["metadata"]["name"]
                    assert secret_ref["key"] in secret["stringData"]
    neurogate = {n for n in names if n.startswith("NEUROGATE_")}
    assert neurogate <= SETTINGS_NAMES, f"not settings: {sorted(neurogate - SETTINGS_NAMES)}"
    assert not set(config["data"]) & set(secret["stringData"])
    for key in config["data"]:
        assert not SECRET_KEY.search(key), f"{key} belongs in the Secret"
    for value in secret["stringData"].values():
        assert re.search(r"<[a-z-]+>", value), "the Secret template must hold placeholders"
    settings = settings_from({**config["data"], **secret["stringData"]}, monkeypatch)
    assert settings.profile == "production"
    assert settings.bus.backend == "kafka"
    assert settings.db_auto_migrate is False
    assert len(settings.export.destinations) == 1


# Compose gives every NeuroGate service its shared settings; Kubernetes gives a secret only to
# the containers that use it: the webhooks (each receiver's secret) go to the workers, which
# send them.
K8S_SECRETS_FOR = {"NEUROGATE_NOTIFY__WEBHOOKS": "worker"}
K8S_WORKLOADS = {
    "migrate": "neurogate-migrate",
    "listener": "neurogate-listener",
    "api": "neurogate-api",
    "inference_worker": "neurogate-worker",
}


def _k8s_env(workload_name: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The environment of a workload's container (ConfigMap, then its own ``env`` with the
    Secret template's values), and the container."""
    [config] = _by_kind("ConfigMap")
    [secret] = _by_kind("Secret")
    [workload] = [
        w
        for w in [*_by_kind("Deployment"), *_by_kind("Job")]
        if w["metadata"]["name"] == workload_name
    ]
    [container] = _containers(workload)
    env = {**config["data"]}
    for entry in container.get("env", []):
        secret_ref = entry.get("valueFrom", {}).get("secretKeyRef")
        env[entry["name"]] = (
            secret["stringData"][secret_ref["key"]] if secret_ref else entry["value"]
        )
    return env, container


def test_k8s_containers_get_every_setting_compose_gives_their_service(
    compose: dict[str, Any],
) -> None:
    for service, workload in K8S_WORKLOADS.items():
        env, container = _k8s_env(workload)
        runs = _services_of(container["command"])
        compose_names = {
            n for n in _environment(_services(compose)[service]) if n.startswith("NEUROGATE_")
        }
        for name in compose_names:
            secret_for = K8S_SECRETS_FOR.get(name)
            wanted = secret_for is None or secret_for in runs
            assert (name in env) == wanted, f"{workload}: {name} {'missing' if wanted else 'given'}"


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_workers_get_priors_routing_and_webhooks(
    where: str, compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    if where == "compose":
        worker = _services(compose)["inference_worker"]
        env = {k: interpolate(v) for k, v in _environment(worker).items()}
    else:
        env, container = _k8s_env("neurogate-worker")
        [webhooks] = [e for e in container["env"] if e["name"] == "NEUROGATE_NOTIFY__WEBHOOKS"]
        assert webhooks["valueFrom"]["secretKeyRef"]["optional"] is True  # none: no webhooks
    settings = settings_from(env, monkeypatch)
    [pacs] = settings.export.destinations
    assert settings.priors.enabled
    assert (settings.priors.ae_title, settings.priors.host, settings.priors.port) == (
        pacs.ae_title,
        pacs.host,
        pacs.port,
    )  # the PACS the results go to holds the priors
    rules = settings.routing.rules_file
    assert rules is not None and rules.is_relative_to("/app")  # the image's copy of the repo
    assert (REPO / rules.relative_to("/app")).is_file(), rules
    assert len(settings.notify.webhooks) == (0 if where == "compose" else 1)  # the template's


def _services_of(command: list[str]) -> tuple[str, ...]:
    """The services a container's ``neurogate`` command runs (none: a one-shot command)."""
    assert command[0] == "neurogate", command
    if command[1] == "run":
        return ("listener", "worker", "api")
    return (command[1],) if command[1] in ("listener", "worker", "api") else ()


def _writable_mount(
    directory: Path, mounts: list[dict[str, Any]], volumes: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """The mount that ``directory`` lies on, if that mount is writable."""
    below = [m for m in mounts if directory.is_relative_to(m["mountPath"])]
    if not below:
        return None
    mount = max(below, key=lambda m: len(Path(m["mountPath"]).parts))
    volume = volumes[mount["name"]]
    if mount.get("readOnly") or not ({"emptyDir", "persistentVolumeClaim"} & set(volume)):
        return None
    return mount


def test_k8s_every_directory_a_container_writes_is_a_writable_mount(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a read-only root filesystem, a write anywhere but a mount fails: the worker's
    heartbeat under NEUROGATE_DATA_DIR did, and its liveness probe killed it every 300 s."""
    from neurogate.cli import written_directories

    [config] = _by_kind("ConfigMap")
    [secret] = _by_kind("Secret")
    checked = set()
    for workload in [*_by_kind("Deployment"), *_by_kind("Job")]:
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in _containers(workload):
            name = f"{workload['metadata']['name']}/{container['name']}"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            env = {**config["data"]}
            for entry in container.get("env", []):
                secret_ref = entry.get("valueFrom", {}).get("secretKeyRef")
                env[entry["name"]] = (
                    secret["stringData"][secret_ref["key"]] if secret_ref else entry["value"]
                )
            settings = settings_from(env, monkeypatch)
            services = _services_of(container["command"])
            written = set(written_directories(settings, services))
            written |= {Path("/tmp"), Path(env["HOME"])}  # tempfile, and libraries' caches
            for directory in sorted(written):
                mount = _writable_mount(directory, container.get("volumeMounts", []), volumes)
                assert mount is not None, f"{name} writes {directory}: not on a writable mount"
            checked.add((workload["metadata"]["name"], services))
    assert ("neurogate-worker", ("worker",)) in checked
    assert ("neurogate-migrate", ()) in checked


def test_writable_mount_check_catches_a_write_to_the_root_filesystem() -> None:
    volumes = {
        "dicom": {"persistentVolumeClaim": {}},
        "tmp": {"emptyDir": {}},
        "cfg": {"configMap": {}},
    }
    mounts = [
        {"name": "dicom", "mountPath": "/var/lib/neurogate/dicom"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cfg", "mountPath": "/etc/neurogate"},
    ]
    assert _writable_mount(Path("/var/lib/neurogate/dicom/tmp"), mounts, volumes)
    assert _writable_mount(Path("/var/lib/neurogate"), mounts, volumes) is None
    assert _writable_mount(Path("/etc/neurogate"), mounts, volumes) is None
    assert _writable_mount(Path("/tmp/x"), [{**mounts[1], "readOnly": True}], volumes) is None
    assert _services_of(["neurogate", "worker"]) == ("worker",)
    assert _services_of(["neurogate", "db", "upgrade"]) == ()


# --- deploy/healthcheck.py, against real peers -------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def running_listener(tmp_path: Path) -> Iterator[Callable[..., ListenerSettings]]:
    """Start the real listener service (SQLite, embedded bus) with the given listener settings;
    yields a function that starts one and returns its settings with the bound port."""
    from dicom_listener.service import ListenerService
    from neurogate.bus import open_bus
    from neurogate.db import create_db_engine, session_factory, upgrade_to_head

    url = f"sqlite:///{tmp_path / 'neurogate.sqlite'}"
    upgrade_to_head(url)
    engine = create_db_engine(url)
    started: list[tuple[ListenerService, Any]] = []

    def start(**listener: object) -> ListenerSettings:
        options = {"host": "127.0.0.1", "port": 0, "min_free_disk_mb": 0, **listener}
        settings = Settings(
            data_dir=tmp_path,
            database_url=url,
            listener=ListenerSettings.model_validate(options),
        )
        bus = open_bus(settings.bus, settings.embedded_bus_path)
        service = ListenerService(settings, session_factory(engine), bus)
        service.start()
        started.append((service, bus))
        return settings.listener.model_copy(update={"port": service.address[1]})

    try:
        yield start
    finally:
        for service, bus in reversed(started):
            service.stop(grace_s=5)
            bus.close()
        engine.dispose()


def test_listener_probe_echoes(running_listener: Callable[..., ListenerSettings]) -> None:
    healthy, reason = healthcheck.probe_listener(running_listener(), timeout_s=5)
    assert healthy, reason
    assert reason == "C-ECHO success"


def test_listener_probe_counts_a_rejection_as_alive(
    running_listener: Callable[..., ListenerSettings],
) -> None:
    settings = running_listener(allowed_calling_ae_titles=["MRI_1"])
    healthy, reason = healthcheck.probe_listener(settings, timeout_s=5)
    assert healthy, reason
    assert "rejection" in reason


def test_listener_probe_fails_without_a_listener() -> None:
    settings = ListenerSettings(host="0.0.0.0", port=_closed_port())
    healthy, reason = healthcheck.probe_listener(settings, timeout_s=5)
    assert not healthy
    assert "no DICOM association" in reason


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthcheck" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_api_probe(status: int, healthy: bool) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result, reason = healthcheck.probe_api("0.0.0.0", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result is healthy, reason
    assert str(status) in reason


def test_api_probe_fails_without_an_api() -> None:
    healthy, reason = healthcheck.probe_api("127.0.0.1", _closed_port(), timeout_s=2)
    assert not healthy
    assert "unreachable" in reason


def test_worker_probe(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'neurogate.sqlite'}"
    local = Settings(database_url=database, data_dir=tmp_path)
    healthy, reason = healthcheck.probe_worker(local)
    assert not healthy and "no heartbeat" in reason  # the consume loop never ran

    heartbeat = tmp_path / healthcheck.HEARTBEAT_FILE
    assert healthcheck.HEARTBEAT_FILE == HEARTBEAT_FILE
    heartbeat.touch()
    healthy, reason = healthcheck.probe_worker(local)
    assert healthy, reason
    stale = time.time() - local.bus.kafka_max_poll_interval_ms / 1000 - 60
    os.utime(heartbeat, (stale, stale))
    healthy, reason = healthcheck.probe_worker(local)
    assert not healthy and "silent" in reason  # a consume loop stuck longer than Kafka allows
    heartbeat.touch()

    with socket.socket() as broker:
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        servers = [f"127.0.0.1:{_closed_port()}", f"127.0.0.1:{broker.getsockname()[1]}"]
        bus = BusSettings(backend="kafka", kafka_bootstrap_servers=servers)
        settings = Settings(database_url=database, data_dir=tmp_path, bus=bus)
        healthy, reason = healthcheck.probe_worker(settings, timeout_s=2)
        assert healthy, reason

    bus = BusSettings(backend="kafka", kafka_bootstrap_servers=[f"127.0.0.1:{_closed_port()}"])
    settings = Settings(database_url=database, data_dir=tmp_path, bus=bus)
    healthy, reason = healthcheck.probe_worker(settings, timeout_s=2)
    assert not healthy
    assert "Kafka" in reason

    unreachable = f"sqlite:///{tmp_path / 'missing' / 'neurogate.sqlite'}"
    healthy, reason = healthcheck.probe_worker(
        Settings(database_url=unreachable, data_dir=tmp_path)
    )
    assert not healthy
    assert "database" in reason


def test_worker_probe_reads_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    settings_from({"NEUROGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}, monkeypatch)
    monkeypatch.setenv("NEUROGATE_DATA_DIR", str(tmp_path))
    (tmp_path / HEARTBEAT_FILE).touch()
    assert healthcheck.main(["worker"]) == 0
    assert capsys.readouterr().out.startswith("healthy: ")
    monkeypatch.setenv("NEUROGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'no' / 'db.sqlite'}")
    assert healthcheck.main(["worker"]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: ")


def test_alive_probe(tmp_path: Path) -> None:
    healthy, reason = healthcheck.probe_alive(Path(f"/proc/{os.getpid()}"))
    assert healthy, reason
    assert not healthcheck.probe_alive(tmp_path / "gone")[0]
    (tmp_path / "stat").write_text("7 (neurogate worker) Z 1 7 7 0 -1")
    assert healthcheck.probe_alive(tmp_path) == (False, "main process state Z")


# --- docs/conformance.md -----------------------------------------------------------------------

UID_IN_TABLE = re.compile(r"`(1\.2\.[0-9.]+)`")


def _section(name: str) -> list[str]:
    """The UIDs in backticks between ``<!-- name:begin -->`` and ``<!-- name:end -->``, in order."""
    text = CONFORMANCE.read_text()
    match = re.search(rf"<!-- {name}:begin -->(.*?)<!-- {name}:end -->", text, re.DOTALL)
    assert match is not None, f"docs/conformance.md has no {name} section"
    return UID_IN_TABLE.findall(match.group(1))


def test_conformance_lists_every_sop_class_the_listener_accepts() -> None:
    contexts = build_ae(ListenerSettings()).supported_contexts
    accepted = {str(cx.abstract_syntax) for cx in contexts}
    others = {VERIFICATION, MODALITY_PERFORMED_PROCEDURE_STEP}
    storage = _section("listener-storage-sop-classes")
    assert len(storage) == len(set(storage)), "a SOP class is listed twice"
    assert set(storage) == accepted - others, (
        f"missing: {sorted(accepted - others - set(storage))}; "
        f"not accepted: {sorted(set(storage) - accepted)}"
    )
    assert set(_section("listener-other-sop-classes")) == others


def test_conformance_lists_the_listener_transfer_syntaxes_in_preference_order() -> None:
    contexts = build_ae(ListenerSettings()).supported_contexts
    for cx in contexts:
        assert [str(ts) for ts in cx.transfer_syntax] == ACCEPTED_TRANSFER_SYNTAXES
    assert _section("listener-transfer-syntaxes") == ACCEPTED_TRANSFER_SYNTAXES


def test_conformance_lists_what_the_exporter_sends() -> None:
    from inference_worker import exporter
    from inference_worker.results.pdf import ENCAPSULATED_PDF_STORAGE

    sent = {
        SegmentationStorage,
        Comprehensive3DSRStorage,
        SecondaryCaptureImageStorage,
        ENCAPSULATED_PDF_STORAGE,
    }
    assert set(_section("exporter-sop-classes")) == {str(uid) for uid in sent}
    assert _section("exporter-transfer-syntaxes") == list(exporter._TRANSFER_SYNTAXES)


def test_conformance_names_every_status_and_identity() -> None:
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    from dicom_listener.mpps import MAY_NO_LONGER_BE_UPDATED

    text = CONFORMANCE.read_text()
    for code in [*Status, MAY_NO_LONGER_BE_UPDATED]:
        assert f"`0x{int(code):04X}`" in text, f"status 0x{int(code):04X} is not documented"
    assert f"`{PYNETDICOM_IMPLEMENTATION_UID}`" in text
    assert f"`{PYNETDICOM_IMPLEMENTATION_VERSION}`" in text


def test_conformance_configuration_defaults_match_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = CONFORMANCE.read_text()
    section = re.search(r"<!-- configuration:begin -->(.*?)<!-- configuration:end -->", text, re.S)
    assert section is not None
    rows = re.findall(r"^\| `(NEUROGATE_\w+)` \| `([^`]*)` \|", section.group(1), re.MULTILINE)
    assert len(rows) >= 15
    defaults = settings_from({}, monkeypatch)
    for name, documented in rows:
        assert name in SETTINGS_NAMES, name
        group, _, key = name.removeprefix("NEUROGATE_").lower().partition("__")
        value = getattr(getattr(defaults, group), key)
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list):
            value = ",".join(value)
        assert documented == str(value), f"{name}: documented {documented!r}, default {value!r}"
