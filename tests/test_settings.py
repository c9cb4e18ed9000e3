"""Settings from the environment, and refusal of settings that cannot work."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from neurogate.settings import ListenerSettings, Settings


def test_environment_with_nested_groups_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROGATE_LISTENER__AE_TITLE", "NG_MAIN")
    monkeypatch.setenv("NEUROGATE_LISTENER__ALLOWED_CALLING_AE_TITLES", "MRI_1, MRI_2")
    monkeypatch.setenv("NEUROGATE_BUS__BACKEND", "kafka")
    monkeypatch.setenv("NEUROGATE_BUS__KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("NEUROGATE_DATABASE_URL", "postgresql+psycopg2://ng@db/ng")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.listener.ae_title == "NG_MAIN"
    assert settings.listener.allowed_calling_ae_titles == ["MRI_1", "MRI_2"]
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


def test_tls_needs_certificate_and_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match="both tls_cert_file and tls_key_file"):
        ListenerSettings(tls_cert_file=tmp_path / "cert.pem")
