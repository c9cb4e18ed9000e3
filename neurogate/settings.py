"""Node settings, read from the environment (prefix ``NEUROGATE_``) and an optional ``.env`` file.

Nested groups use ``__`` as the delimiter: ``NEUROGATE_LISTENER__AE_TITLE=NEUROGATE``. Build the
object once per process through :func:`get_settings` (or construct :class:`Settings` explicitly in
tests); nothing reads the environment at import time.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from neurogate.budget import DEFAULT_MAX_DECODE_MB, DecodeBudget

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no controls
# Accounts of the API (its request schemas use the same rules).
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{2,63}$"
MIN_PASSWORD = 10
MIN_WEBHOOK_SECRET = 16
# What a webhook can be told of (inference_worker.notify.Event).
WEBHOOK_EVENTS = ("analysis.completed", "analysis.failed", "export.parked")


def _split_csv(value: object) -> object:
    """Accept ``"A,B"`` as well as a list for list-valued settings."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def validate_ae_title(value: str) -> str:
    """Return ``value`` stripped, or raise ``ValueError`` if it is not a valid AE title."""
    stripped = value.strip()
    if not _AE_TITLE.match(stripped):
        raise ValueError(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return stripped


class ListenerSettings(BaseModel):
    """The C-STORE SCP: identity, access control, limits, study completion."""

    ae_title: str = "NEUROGATE"
    host: str = "0.0.0.0"  # a DICOM node listens for scanners on the network
    port: int = Field(11112, ge=0, le=65535)  # 0: any free port (tests)
    require_called_ae_title: bool = True
    # Empty: any calling AE may associate. Otherwise only these (A-ASSOCIATE-RJ reason 3).
    allowed_calling_ae_titles: Annotated[list[str], NoDecode] = []
    max_associations: int = Field(10, ge=1)
    # Connections one address may have open at once (0: any number); one more is closed as it
    # is accepted. Below max_associations, so that one peer cannot take every slot.
    max_connections_per_peer: int = Field(5, ge=0)
    # Refuse C-STORE with 0xA700 when less than this is free on the storage volume.
    min_free_disk_mb: int = Field(1024, ge=0)
    # A study is complete this long after its last instance (Orthanc and mercure use 60 s).
    study_quiet_seconds: float = Field(30.0, gt=0)
    completion_check_seconds: float = Field(1.0, gt=0)
    # What runs the associations (dicom_listener.engines): "stock", pynetdicom's public API
    # alone, any pynetdicom 3.x; "fast", the accelerator, only on the pynetdicom release it was
    # derived from; "auto", fast when that release is installed, otherwise stock (one warning)
    engine: Literal["auto", "stock", "fast"] = "auto"
    # Receive datasets straight to disk (memory stays flat for large instances).
    chunked_receive: bool = True
    # Fast engine: C-STORE requests handled on the network thread (dicom_listener.fast_store);
    # off: every request goes through pynetdicom's service class, as any other DIMSE message does
    fast_store: bool = True
    fsync: bool = True
    # Largest P-DATA-TF PDU peers may send, as advertised in the A-ASSOCIATE-AC; 0: the
    # listener's ceiling (16 MiB), which also caps larger values, and so does a share of the
    # process's memory limit (RLIMIT_AS or the cgroup's memory.max) per association
    max_pdu_size: int = Field(0, ge=0)
    acse_timeout_seconds: float = 30.0
    dimse_timeout_seconds: float = 60.0
    network_timeout_seconds: float = 60.0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None  # set to require and verify client certificates

    _split = field_validator("allowed_calling_ae_titles", mode="before")(_split_csv)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _check_allowed(cls, value: list[str]) -> list[str]:
        return [validate_ae_title(v) for v in value]

    @model_validator(mode="after")
    def _check_tls(self) -> ListenerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("listener TLS needs both tls_cert_file and tls_key_file")
        if self.tls_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_ca_file is only used together with tls_cert_file/tls_key_file")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None


class BusSettings(BaseModel):
    """The event bus: the embedded single-machine log, or Kafka."""

    backend: Literal["embedded", "kafka"] = "embedded"
    # Embedded backend: a SQLite log shared by the processes of one machine.
    embedded_path: Path | None = None
    kafka_bootstrap_servers: Annotated[list[str], NoDecode] = ["localhost:9092"]
    kafka_client_id: str = "neurogate"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # SASL (SASL_PLAINTEXT, SASL_SSL): mechanism and credentials
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # TLS (SSL, SASL_SSL): the CA that signed the brokers' certificates (default: the system's),
    # and a client certificate where the brokers require one
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_session_timeout_ms: int = Field(10_000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(3_000, ge=100)
    kafka_request_timeout_ms: int = Field(30_000, ge=1000)
    kafka_max_poll_interval_ms: int = Field(900_000, ge=1000)  # one study may take minutes
    topic_partitions: int = Field(6, ge=1)
    topic_replication_factor: int = Field(1, ge=1)
    # Attempts at handling one message before it goes to the dead-letter topic.
    max_delivery_attempts: int = Field(3, ge=1)
    # Longest wait between attempts to reach an unavailable bus (backoff doubles up to this).
    retry_max_backoff_seconds: float = Field(30.0, gt=0)

    _split = field_validator("kafka_bootstrap_servers", mode="before")(_split_csv)

    @model_validator(mode="after")
    def _check_kafka_security(self) -> BusSettings:
        protocol = self.kafka_security_protocol
        sasl = (self.kafka_sasl_mechanism, self.kafka_sasl_username, self.kafka_sasl_password)
        if protocol.startswith("SASL_"):
            if None in sasl:
                raise ValueError(
                    f"Kafka {protocol} needs kafka_sasl_mechanism, kafka_sasl_username and "
                    "kafka_sasl_password"
                )
        elif any(value is not None for value in sasl):
            raise ValueError(f"Kafka SASL settings are given but the protocol is {protocol}")
        tls_files = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if not protocol.endswith("SSL") and any(f is not None for f in tls_files):
            raise ValueError(f"Kafka TLS files are given but the protocol is {protocol}")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("a Kafka client certificate needs both its certfile and keyfile")
        return self


class ModelSettings(BaseModel):
    """Which model manifest serves each task; unset: the models shipped in ``models/manifests``.

    Swapping a model (a site's own ``.keras``/``.h5`` classifier, a TorchScript segmenter) is a
    manifest and these settings, not a code change.
    """

    brain_extraction: Path | None = None
    detection: Path | None = None
    classification: Path | None = None
    segmentation: Path | None = None

    def by_task(self) -> dict[str, Path | None]:
        """Task name (``models.registry.Task`` value) -> configured manifest, for every task."""
        return {
            "brain_extraction": self.brain_extraction,
            "detection": self.detection,
            "classification": self.classification,
            "segmentation": self.segmentation,
        }


class ResultSettings(BaseModel):
    """How the result objects (SEG, SR, Grad-CAM capture, PDF) are written."""

    # Root of the UIDs the node creates; unset: UUID-derived "2.25." UIDs (no registration).
    uid_root: str | None = None
    manufacturer: str = "NeuroGate"
    institution_name: str | None = None
    station_name: str = "NEUROGATE"
    # Series Numbers of the new series: base + 1 (SEG), + 2 (SR), + 3 (Grad-CAM), + 4 (PDF).
    series_number_base: int = Field(9000, ge=0, le=2**31 - 10)

    @field_validator("uid_root")
    @classmethod
    def _check_root(cls, value: str | None) -> str | None:
        if value is None:
            return None
        body = value.rstrip(".")
        if not body or len(body) > 40 or not all(p.isdigit() for p in body.split(".")):
            raise ValueError(f"uid_root must be dotted digits of at most 40 characters: {value!r}")
        return body + "."


class PacsDestination(BaseModel):
    """A DICOM node that receives the results through C-STORE."""

    kind: Literal["dimse"] = "dimse"
    name: str = Field(min_length=1, max_length=64)
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls_ca_file: Path | None = None  # set to send over TLS
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return validate_ae_title(value)

    def describe(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class StowRsDestination(BaseModel):
    """A DICOMweb archive that receives the results through STOW-RS (PS3.18 10.5)."""

    kind: Literal["stowrs"]
    name: str = Field(min_length=1, max_length=64)
    # The DICOMweb service root (the objects go to ``{url}/studies``), e.g.
    # https://pacs.example.org/dicom-web
    url: str
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None  # basic
    password: SecretStr | None = None  # basic
    token: SecretStr | None = None  # bearer
    tls_ca_file: Path | None = None  # https: the CA that signed the server's certificate

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// address, not {value!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"url is the DICOMweb service root, without ?query or #: {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_auth(self) -> StowRsDestination:
        basic = (self.username, self.password)
        if self.auth == "basic" and None in basic:
            raise ValueError(f"destination {self.name!r}: auth basic needs username and password")
        if self.auth == "bearer" and self.token is None:
            raise ValueError(f"destination {self.name!r}: auth bearer needs token")
        if self.auth != "basic" and any(v is not None for v in basic):
            raise ValueError(f"destination {self.name!r}: username/password need auth basic")
        if self.auth != "bearer" and self.token is not None:
            raise ValueError(f"destination {self.name!r}: token needs auth bearer")
        if self.tls_ca_file is not None and not self.url.startswith("https:"):
            raise ValueError(f"destination {self.name!r}: tls_ca_file needs an https:// url")
        return self

    def describe(self) -> str:
        return self.url


def _destination_kind(value: Any) -> str:
    """``kind`` of a destination, ``dimse`` when not given (the settings before DICOMweb)."""
    if isinstance(value, dict):
        return str(value.get("kind", "dimse"))
    return str(getattr(value, "kind", "dimse"))


# One entry of NEUROGATE_EXPORT__DESTINATIONS: C-STORE (kind "dimse", the default) or STOW-RS.
Destination = Annotated[
    Annotated[PacsDestination, Tag("dimse")] | Annotated[StowRsDestination, Tag("stowrs")],
    Discriminator(_destination_kind),
]


class ExportSettings(BaseModel):
    """Where results go and how hard the node tries (per object, per destination)."""

    # JSON in the environment: NEUROGATE_EXPORT__DESTINATIONS='[{"name": "pacs", ...}]'
    destinations: list[Destination] = Field(default_factory=list)
    calling_ae_title: str = "NEUROGATE"
    max_attempts: int = Field(8, ge=1)
    backoff_seconds: float = Field(5.0, gt=0)  # doubles after each failure, up to the maximum
    backoff_max_seconds: float = Field(600.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)
    # How long an exporter holds the exports it took (renewed before each object it sends);
    # those of a worker that died go to another exporter once it lapses. Longer than the time
    # to associate plus one C-STORE (two network timeouts).
    lease_seconds: float = Field(120.0, gt=0)

    @field_validator("calling_ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return validate_ae_title(value)


class PriorSettings(BaseModel):
    """The PACS the worker asks for a patient's earlier brain MR studies, for follow-up.

    Unset ``ae_title``: no prior look-up. The worker queries (C-FIND, Study Root) and retrieves
    (C-MOVE to ``move_destination``, the listener, or C-GET) as ``calling_ae_title``; the PACS
    must know that AE title (for C-MOVE, as a modality at the listener's address).
    """

    ae_title: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(104, ge=1, le=65535)
    calling_ae_title: str = "NEUROGATE"
    # The AE title the PACS sends the retrieved instances to; unset: the listener's AE title.
    move_destination: str | None = None
    # c-move: the PACS sends to the listener (it must know the listener's address); c-get: the
    # worker receives on its own association and stores into the listener at listener_host.
    retrieve_method: Literal["c-move", "c-get"] = "c-move"
    listener_host: str = "127.0.0.1"  # c-get: where the worker reaches the listener
    listener_port: int | None = Field(None, ge=1, le=65535)  # c-get; unset: LISTENER__PORT
    # Only studies at most this many days before the analysed one count as priors.
    lookback_days: int = Field(1825, ge=1)
    # The most recent priors considered: each one never analysed is retrieved and analysed.
    max_priors: int = Field(1, ge=1, le=10)
    # A Study Description must match this (case-insensitive search) for the study to count as
    # a brain MR study; studies without one count.
    study_description_pattern: str = r"brain|head|neuro|cran|skull|kopf|sch[aä]del|cerebr"
    timeout_seconds: float = Field(30.0, gt=0)  # association and each DIMSE response
    retrieve_timeout_seconds: float = Field(600.0, gt=0)  # a whole C-MOVE

    @field_validator("ae_title", "calling_ae_title", "move_destination")
    @classmethod
    def _check_ae(cls, value: str | None) -> str | None:
        return validate_ae_title(value) if value is not None else None

    @field_validator("study_description_pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @property
    def enabled(self) -> bool:
        return self.ae_title is not None


class RoutingSettings(BaseModel):
    """Which studies the node analyses, with which models, how urgently and for whom."""

    # The rules (TOML); unset: inference_worker/routing_rules.toml (every brain MR, routine;
    # STAT by study description; CT, other modalities and other body parts not for this node)
    rules_file: Path | None = None


class Webhook(BaseModel):
    """An HTTP(S) endpoint told of results: a FHIR R4 Bundle, HMAC-SHA256 signed."""

    name: str = Field(min_length=1, max_length=64)
    url: str = Field(pattern=r"^https?://[^\s/]+")
    # Shared with the receiver; signs timestamp + body (see inference_worker/notify.py).
    secret: SecretStr
    # Which events it gets; empty: all of analysis.completed, analysis.failed, export.parked.
    events: Annotated[list[str], NoDecode] = []
    tls_ca_file: Path | None = None  # the CA of an https receiver (default: the system's)

    _split = field_validator("events", mode="before")(_split_csv)

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_WEBHOOK_SECRET:
            raise ValueError(f"a webhook secret needs at least {MIN_WEBHOOK_SECRET} characters")
        return value

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(WEBHOOK_EVENTS))
        if unknown:
            raise ValueError(f"unknown events {unknown}; known: {', '.join(WEBHOOK_EVENTS)}")
        return value


class NotifySettings(BaseModel):
    """Webhooks on analysis completed / failed and export parked, retried like exports."""

    # JSON in the environment: NEUROGATE_NOTIFY__WEBHOOKS='[{"name": "ehr", "url": ..., ...}]'
    webhooks: list[Webhook] = Field(default_factory=list)
    max_attempts: int = Field(8, ge=1)
    backoff_seconds: float = Field(5.0, gt=0)  # doubles after each failure, up to the maximum
    backoff_max_seconds: float = Field(600.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)
    lease_seconds: float = Field(60.0, gt=0)  # longer than one request (timeout_seconds)

    @field_validator("webhooks")
    @classmethod
    def _check_names(cls, value: list[Webhook]) -> list[Webhook]:
        names = [w.name for w in value]
        if len(set(names)) != len(names):
            raise ValueError(f"webhook names must be distinct: {names}")
        return value


class ApiSettings(BaseModel):
    """The REST API for the portal."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Signs the access tokens; required in production, generated per process when local.
    jwt_secret: SecretStr | None = None
    access_token_minutes: int = Field(60, ge=1)
    # Failed sign-ins allowed per account and client within the window before 429s.
    login_max_failures: int = Field(5, ge=1)
    login_window_seconds: float = Field(300.0, gt=0)
    max_upload_mb: float = Field(512.0, gt=0)
    # Every other request body (JSON, /predict, /api/classify pictures) is refused above this.
    max_request_mb: float = Field(32.0, gt=0)
    cors_origins: Annotated[list[str], NoDecode] = []
    # Reverse proxies (addresses or networks) whose X-Forwarded-For / -Proto is believed; empty:
    # none, the peer of the TCP connection is the client (sign-in throttle, logs, audit trail).
    trusted_proxies: Annotated[list[str], NoDecode] = []
    # The first admin account, created at start when no admin exists (no default password).
    admin_username: str | None = None
    admin_password: SecretStr | None = None
    # The OHIF viewer's address (e.g. http://pacs-viewer:3000): the operator page (/operator)
    # links each study to {ohif_url}/viewer?StudyInstanceUIDs=...; none: no links.
    ohif_url: str | None = None
    # Self-registration (POST /api/auth/register): "approval" (inactive until an admin acts) or
    # "open" (active at once); either way a clinician account.
    registration: Literal["approval", "open"] = "approval"
    # The image-only seed routes (/predict, /api/classify, /api/predict) without a token, for
    # clients that send none; each client (address) may then make open_rate_limit requests per
    # open_rate_window_seconds.
    open_image_routes: bool = False
    open_rate_limit: int = Field(30, ge=1)
    open_rate_window_seconds: float = Field(60.0, gt=0)
    # Where generated patient credentials are e-mailed (seed 003's portal); unset: not sent.
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "neurogate@localhost"
    smtp_starttls: bool = True

    _split = field_validator("cors_origins", "trusted_proxies", mode="before")(_split_csv)

    @field_validator("ohif_url")
    @classmethod
    def _check_ohif_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError(
                f"ohif_url: {value!r} is not an http(s) address such as http://host:3000"
            )
        return value.rstrip("/") if value else value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for proxy in value:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {proxy!r} is not an IP address or network (e.g. 10.0.0.5, "
                    "10.0.0.0/24); '*' is refused: every client could then choose its address"
                ) from None
        return value

    @field_validator("admin_username")
    @classmethod
    def _check_admin_username(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(USERNAME_PATTERN, value):
            raise ValueError(
                f"invalid username {value!r}: 3-64 letters, digits or . _ @ -, "
                "starting with a letter or digit"
            )
        return value

    @field_validator("admin_password")
    @classmethod
    def _check_admin_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_PASSWORD:
            raise ValueError(f"the admin password needs at least {MIN_PASSWORD} characters")
        return value


class Settings(BaseSettings):
    """Everything a NeuroGate process reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="NEUROGATE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    profile: Literal["local", "production"] = "local"
    data_dir: Path = Path("var")
    # Where received instances live; shared with the workers (a volume in production).
    storage_dir: Path | None = None
    database_url: str | None = None
    db_auto_migrate: bool = True
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # The most memory one image, series or NIfTI volume may need once decoded (its pixels plus
    # their float32 copy, from the declared geometry): the worker and the API refuse larger ones.
    max_decode_mb: float = Field(DEFAULT_MAX_DECODE_MB, gt=0)
    listener: ListenerSettings = ListenerSettings()
    bus: BusSettings = BusSettings()
    models: ModelSettings = ModelSettings()
    results: ResultSettings = ResultSettings()
    export: ExportSettings = ExportSettings()
    priors: PriorSettings = PriorSettings()
    routing: RoutingSettings = RoutingSettings()
    notify: NotifySettings = NotifySettings()
    api: ApiSettings = ApiSettings()

    @property
    def storage_root(self) -> Path:
        return (self.storage_dir or self.data_dir / "dicom").resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'neurogate.sqlite').resolve()}"

    @property
    def decode_budget(self) -> DecodeBudget:
        return DecodeBudget.of_mb(self.max_decode_mb)

    @property
    def embedded_bus_path(self) -> Path:
        return (self.bus.embedded_path or self.data_dir / "bus.sqlite").resolve()


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return Settings()
