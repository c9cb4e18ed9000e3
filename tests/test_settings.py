"""Settings from the environment, and refusal of settings that cannot work."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import ValidationError
from pydantic_settings import SettingsError

from neurogate.bus.kafka import client_config
from neurogate.preflight import (
    NOT_SETTINGS,
    NOT_SETTINGS_PREFIX,
    REMOVED_SETTINGS,
    env_name,
    setting_names,
    unknown_settings,
)
from neurogate.settings import BusSettings, ListenerSettings, Settings
from tests.conftest import free_port


def test_environment_with_nested_groups_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROGATE_LISTENER__AE_TITLE", "NG_MAIN")
    monkeypatch.setenv("NEUROGATE_LISTENER__ALLOWED_CALLING_AE_TITLES", "MRI_1, MRI_2")
    monkeypatch.setenv("NEUROGATE_LISTENER__ENGINE", "stock")
    monkeypatch.setenv("NEUROGATE_BUS__BACKEND", "kafka")
    monkeypatch.setenv("NEUROGATE_BUS__KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("NEUROGATE_DATABASE_URL", "postgresql+psycopg2://ng@db/ng")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.listener.ae_title == "NG_MAIN"
    assert settings.listener.allowed_calling_ae_titles == ["MRI_1", "MRI_2"]
    assert settings.listener.engine == "stock"
    assert settings.bus.kafka_bootstrap_servers == ["k1:9092", "k2:9092"]
    assert settings.sqlalchemy_url == "postgresql+psycopg2://ng@db/ng"


def test_defaults_need_no_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.sqlalchemy_url.startswith("sqlite:///")
    assert settings.bus.backend == "embedded"
    assert settings.storage_root == (tmp_path / "dicom").resolve()


@pytest.mark.parametrize("title", ["", "A" * 17, "BACK\\SLASH", "TAB\tX"])
def test_invalid_ae_titles_are_refused(title: str) -> None:
    with pytest.raises(ValidationError):
        ListenerSettings(ae_title=title)


@pytest.mark.parametrize("engine", ["", "pynetdicom", "FAST"])
def test_an_engine_that_does_not_exist_is_refused(engine: str) -> None:
    with pytest.raises(ValidationError, match="engine"):
        ListenerSettings.model_validate({"engine": engine})


def test_tls_needs_certificate_and_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match="both tls_cert_file and tls_key_file"):
        ListenerSettings(tls_cert_file=tmp_path / "cert.pem")


def test_kafka_sasl_and_tls_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs kafka_sasl_mechanism"):
        BusSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="ng")
    with pytest.raises(ValidationError, match="protocol is PLAINTEXT"):
        BusSettings(kafka_sasl_mechanism="SCRAM-SHA-512")
    with pytest.raises(ValidationError, match="TLS files are given"):
        BusSettings(kafka_ssl_cafile=tmp_path / "ca.pem")  # PLAINTEXT
    with pytest.raises(ValidationError, match="both its certfile and keyfile"):
        BusSettings(kafka_security_protocol="SSL", kafka_ssl_certfile=tmp_path / "c.pem")


def test_kafka_clients_get_the_sasl_credentials_and_tls_files(tmp_path: Path) -> None:
    settings = BusSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="neurogate",
        kafka_sasl_password="s3cret",  # type: ignore[arg-type]
        kafka_ssl_cafile=tmp_path / "ca.pem",
    )
    config = client_config(settings)
    assert config["security_protocol"] == "SASL_SSL"
    assert (config["sasl_mechanism"], config["sasl_plain_username"]) == (
        "SCRAM-SHA-512",
        "neurogate",
    )
    assert config["sasl_plain_password"] == "s3cret"
    assert (config["ssl_cafile"], config["ssl_check_hostname"]) == (str(tmp_path / "ca.pem"), True)
    assert "ssl_certfile" not in config
    assert "s3cret" not in repr(settings)  # the password stays out of logs
    plain = client_config(BusSettings())
    assert not any(key.startswith(("sasl_", "ssl_")) for key in plain)


def test_kafka_python_takes_the_sasl_configuration() -> None:
    """kafka-python refuses keys it does not know with an AssertionError at construction; with
    ours it gets as far as looking for a broker (none listens on the port)."""
    settings = BusSettings(
        kafka_bootstrap_servers=[f"127.0.0.1:{free_port()}"],
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="neurogate",
        kafka_sasl_password="s3cret",  # type: ignore[arg-type]
        kafka_request_timeout_ms=1000,
    )
    with pytest.raises(KafkaError):
        KafkaAdminClient(**client_config(settings))


# --- names: every NEUROGATE_* variable is a setting, or is refused -----------------------------

REPO = Path(__file__).resolve().parent.parent
# A complete NEUROGATE_* name: not a prefix ("NEUROGATE_LISTENER__TLS_") nor an f-string's start.
NAME_IN_TEXT = re.compile(r"\bNEUROGATE_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_{])")
# Where the tests read a variable of the environment.
READ_IN_TESTS = re.compile(r"""(?:environ\.get|getenv|environ\[)\(?\s*["'](NEUROGATE_\w+)""")


def _read_by_pydantic_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether ``Settings`` reads the variable ``name``: set to a value no default has, the
    settings either change or refuse that very variable (or its group: a check across fields)."""
    for variable in [n for n in os.environ if n.upper().startswith("NEUROGATE_")]:
        monkeypatch.delenv(variable)
    defaults = Settings(_env_file=None).model_dump()  # type: ignore[call-arg]
    monkeypatch.setenv(name, "x@1")
    try:
        read = Settings(_env_file=None).model_dump() != defaults  # type: ignore[call-arg]
    except ValidationError as exc:
        group = name.upper().partition("__")[0]
        read = any(env_name(e["loc"])[0] in (name.upper(), group) for e in exc.errors())
    except SettingsError as exc:  # a JSON value that does not parse: named by its group
        read = f'field "{name.lower().removeprefix("neurogate_").partition("__")[0]}"' in str(exc)
    monkeypatch.delenv(name)
    return read


def test_the_setting_names_are_the_variables_pydantic_settings_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = setting_names()
    documented = setting_names(groups=False)
    assert {"NEUROGATE_DATA_DIR", "NEUROGATE_LISTENER__PORT", "NEUROGATE_API__JWT_SECRET"} < names
    assert "NEUROGATE_LISTENER" in names - documented  # a whole group, as a JSON object
    assert len(documented) > 100
    for name in sorted(names):
        assert _read_by_pydantic_settings(name, monkeypatch), f"{name} is not read"
        assert _read_by_pydantic_settings(name.lower(), monkeypatch), f"{name.lower()} is not read"
    for name in (
        "NEUROGATE_LISTENER__PORTT",
        "NEUROGATE_LISTENER__CPUS",
        "NEUROGATE_LISTENER_",
        "NEUROGATE_NOTIFY__WEBHOOKS__NAME",  # a list of models is one JSON value, not a group
    ):
        assert not _read_by_pydantic_settings(name, monkeypatch), name  # why they are refused


def test_unknown_and_removed_variables_are_refused_naming_the_nearest_setting() -> None:
    environ = {
        "NEUROGATE_LISTENER__PORTT": "11113",
        "neurogate_api__admin_pasword": "x",  # pydantic-settings ignores case
        "NEUROGATE_LISTNER__AE_TITLE": "NG",
        "NEUROGATE_LOGLEVEL": "DEBUG",
        "NEUROGATE_PORT": "104",  # no close name
        "NEUROGATE_LISTENER__PROCESSES": "2",
        "NEUROGATE_LISTENER__CPUS": "0,1",
        "NEUROGATE_LISTENER": '{"port": 104, "PORT": 105}',  # a whole group: its keys too
        "NEUROGATE_LISTENER__AE_TITLE": "NG",
        "PATH": "/usr/bin",
    }
    dotenv = {"neurogate_listener__portt": "1", "neurogate_bus__backnd": "kafka", "x": None}
    problems = [str(p) for p in unknown_settings(environ, dotenv)]
    removed = "removed on 2026-12-03 with the"
    assert problems == [
        "NEUROGATE_LISTENER__PORTT: not a setting; did you mean NEUROGATE_LISTENER__PORT?",
        "neurogate_api__admin_pasword: not a setting; did you mean NEUROGATE_API__ADMIN_PASSWORD?",
        "NEUROGATE_LISTNER__AE_TITLE: not a setting; did you mean NEUROGATE_LISTENER__AE_TITLE?",
        "NEUROGATE_LOGLEVEL: not a setting; did you mean NEUROGATE_LOG_LEVEL?",
        "NEUROGATE_PORT: not a setting (the README's Settings table lists them)",
        f"NEUROGATE_LISTENER__PROCESSES: {removed} receiver processes, which measured no gain "
        "(README, Benchmarks: Engines); unset it",
        f"NEUROGATE_LISTENER__CPUS: {removed} listener's CPU pinning, which measured no gain "
        "(README, Benchmarks: Engines); unset it",
        "NEUROGATE_LISTENER: 'PORT' is not a setting of the group; did you mean 'port'?",
        "NEUROGATE_BUS__BACKND (in .env): not a setting; did you mean NEUROGATE_BUS__BACKEND?",
    ]  # the environment's NEUROGATE_LISTENER__PORTT is named once, .env's is not read then


def test_variables_of_the_tests_and_their_setup_are_left_alone() -> None:
    used = {
        "NEUROGATE_TEST_POSTGRES_URL": "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
        "NEUROGATE_TEST_LISTENER_ENGINE": "stock",
        "NEUROGATE_TEST_ARTIFACTS": "/tmp/artifacts",
        "NEUROGATE_OHIF_DIR": "/tmp/ohif",
        "NEUROGATE_CHROMIUM": "/usr/bin/chromium",
    }
    assert unknown_settings(used, {k.lower(): v for k, v in used.items()}) == []
    names = setting_names()
    assert not {n for n in names if n.startswith(NOT_SETTINGS_PREFIX)} | (names & NOT_SETTINGS)
    assert not names & set(REMOVED_SETTINGS)


def _service_links(service: str, address: str, port: int, port_name: str) -> dict[str, str]:
    """The variables Kubernetes gives each container of a namespace for one Service."""
    prefix, url = service.upper().replace("-", "_"), f"tcp://{address}:{port}"
    return {
        f"{prefix}_SERVICE_HOST": address,
        f"{prefix}_SERVICE_PORT": str(port),
        f"{prefix}_SERVICE_PORT_{port_name.upper()}": str(port),
        f"{prefix}_PORT": url,
        f"{prefix}_PORT_{port}_TCP": url,
        f"{prefix}_PORT_{port}_TCP_PROTO": "tcp",
        f"{prefix}_PORT_{port}_TCP_PORT": str(port),
        f"{prefix}_PORT_{port}_TCP_ADDR": address,
    }


def test_the_variables_kubernetes_gives_a_pod_for_services_are_left_alone_there() -> None:
    links = {
        **_service_links("neurogate-api", "10.96.0.12", 8000, "http"),
        **_service_links("neurogate-listener", "fd00::7", 11112, "dicom"),
    }
    links["NEUROGATE_LISTENER_PORT"] = "tcp://[fd00::7]:11112"
    in_pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", **links}
    assert unknown_settings(in_pod) == []
    assert len(unknown_settings(links)) == len(links)  # outside a pod they name no setting
    assert unknown_settings({}, {k.lower(): v for k, v in links.items()})  # nor in .env
    typo = {**in_pod, "NEUROGATE_LISTENER_PORT": "11113"}  # not what Kubernetes writes there
    assert [str(p) for p in unknown_settings(typo)] == [
        "NEUROGATE_LISTENER_PORT: not a setting; did you mean NEUROGATE_LISTENER__PORT?"
    ]


def _tracked_texts() -> dict[str, str]:
    """The repository's text files under git, by path."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True
    ).stdout.split("\0")
    texts = {}
    for name in filter(None, listed):
        try:
            texts[name] = (REPO / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # weights, pictures
    return texts


def test_every_name_the_repository_sets_or_reads_is_a_setting_or_left_alone() -> None:
    """README (its Settings table), docs, docker-compose.yml, deploy/, scripts/, bench/ and the
    code name only settings; the tests read only variables the node leaves alone."""
    allowed = setting_names() | NOT_SETTINGS
    found: dict[str, set[str]] = {}
    for relative, text in _tracked_texts().items():
        reads = READ_IN_TESTS if relative.startswith("tests/") else NAME_IN_TEXT
        for name in reads.findall(text):
            found.setdefault(name, set()).add(relative)
    wrong = {
        name: sorted(where)
        for name, where in found.items()
        if name not in allowed and not name.startswith(NOT_SETTINGS_PREFIX)
    }
    assert not wrong, f"neither settings nor left alone: {wrong}"
    assert {"NEUROGATE_TEST_POSTGRES_URL", "NEUROGATE_OHIF_DIR", "NEUROGATE_CHROMIUM"} <= set(found)
    assert {"README.md", "docker-compose.yml", "deploy/k8s/configmap.yaml", "scripts/setup"} <= {
        where for places in found.values() for where in places
    }


def test_the_readme_settings_table_lists_every_setting_and_only_settings() -> None:
    """Its first column names settings in full or, after one, by ``__FIELD`` of that group."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for row in re.findall(r"^\| (`NEUROGATE_[^|]*)\|", table, re.MULTILINE):
        group = ""
        for name in re.findall(r"`([A-Z_]+)`", row):
            if name.startswith("NEUROGATE_"):
                group = name.rpartition("__")[0] + "__" if "__" in name else "NEUROGATE_"
                listed.add(name)
            else:
                listed.add(group + name.removeprefix("__"))
    documented = setting_names(groups=False)
    assert not listed - documented, f"not settings: {sorted(listed - documented)}"
    assert not documented - listed, f"not in the README: {sorted(documented - listed)}"
