"""Settings from the environment, and refusal of settings that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import ValidationError

from neurogate.bus.kafka import client_config
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
