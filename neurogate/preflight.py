"""Settings problems as an operator reads them: one line per problem, naming the variable.

A node that cannot run with its settings should say so before it loads models or opens ports,
and say it in the terms the operator set it in (``NEUROGATE_API__ADMIN_PASSWORD``), not as
pydantic's error locations or a traceback from a thread. A variable that names no setting is a
problem too: pydantic-settings would ignore it, and the node run without what the operator meant.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError
from pydantic_settings import DotEnvSettingsSource, SettingsError

from neurogate.settings import Settings, get_settings

ENV_PREFIX = Settings.model_config.get("env_prefix") or "NEUROGATE_"
_DELIMITER = Settings.model_config.get("env_nested_delimiter") or "__"
_SECRET = re.compile(r"password|secret|token|key", re.IGNORECASE)
_FIELD_OF_SETTINGS_ERROR = re.compile(r'field "([^"]+)"')

# Variables with the prefix that are not settings, read by the test suite and its set-up, which
# the node leaves alone: NEUROGATE_TEST_POSTGRES_URL and NEUROGATE_TEST_LISTENER_ENGINE
# (tests/conftest.py, scripts/test, bench/scale_out.py), NEUROGATE_TEST_ARTIFACTS
# (tests/test_browser.py), NEUROGATE_OHIF_DIR (scripts/setup, tests/ohif.py) and
# NEUROGATE_CHROMIUM (tests/test_browser.py). No setting may be named so (tests/test_settings.py).
NOT_SETTINGS_PREFIX = ENV_PREFIX + "TEST_"
NOT_SETTINGS = frozenset({ENV_PREFIX + "OHIF_DIR", ENV_PREFIX + "CHROMIUM"})
# Kubernetes gives every container <SERVICE>_SERVICE_HOST, <SERVICE>_SERVICE_PORT[_<NAME>],
# <SERVICE>_PORT and <SERVICE>_PORT_<N>_<PROTOCOL>[_PROTO|_PORT|_ADDR] for each Service of its
# namespace (unless its pod says enableServiceLinks: false, as those of deploy/k8s do), so a
# Service named neurogate-api gives API_SERVICE_HOST and the rest with this prefix. In a pod
# (KUBERNETES_SERVICE_HOST is set) they are left alone, known by name and value: an address, a
# port or a protocol.
_ADDRESS = r"[0-9A-Fa-f.:]+"
_SERVICE_LINKS = [
    (re.compile(r"_SERVICE_HOST$"), _ADDRESS),
    (re.compile(r"_SERVICE_PORT(?:_\w+)?$"), r"\d+"),
    (re.compile(r"_PORT(?:_\d+_(?:TCP|UDP|SCTP))?$"), rf"(?:tcp|udp|sctp)://\[?{_ADDRESS}\]?:\d+"),
    (re.compile(r"_PORT_\d+_(?:TCP|UDP|SCTP)_PROTO$"), r"tcp|udp|sctp"),
    (re.compile(r"_PORT_\d+_(?:TCP|UDP|SCTP)_PORT$"), r"\d+"),
    (re.compile(r"_PORT_\d+_(?:TCP|UDP|SCTP)_ADDR$"), _ADDRESS),
]
# Settings that existed and were taken out, and why: a deployment that still sets one is told.
REMOVED_SETTINGS = {
    ENV_PREFIX + "LISTENER__PROCESSES": "removed on 2026-12-03 with the receiver processes, "
    "which measured no gain (README, Benchmarks: Engines); unset it",
    ENV_PREFIX + "LISTENER__CPUS": "removed on 2026-12-03 with the listener's CPU pinning, "
    "which measured no gain (README, Benchmarks: Engines); unset it",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the settings: the variable to change, and what is wrong."""

    variable: str
    message: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.message}"


class InvalidSettings(Exception):
    """The settings cannot run the node; ``problems`` says why, one per variable."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def env_name(location: Iterable[str | int]) -> tuple[str, str]:
    """The variable of a pydantic error location, and the rest of the location.

    ``("export", "destinations", 0, "port")`` is ``NEUROGATE_EXPORT__DESTINATIONS`` (a JSON
    list in one variable) with ``"entry 0, port"`` left over.
    """
    names: list[str] = []
    rest: list[str] = []
    for part in location:
        if isinstance(part, int) or rest:
            rest.append(f"entry {part}" if isinstance(part, int) else str(part))
        else:
            names.append(part)
    return ENV_PREFIX + "__".join(names).upper(), ", ".join(rest)


def problems_of(
    error: ValidationError | SettingsError,
    environ: Mapping[str, str] | None = None,
) -> list[Problem]:
    """What pydantic(-settings) refused, one :class:`Problem` per error, secrets left out."""
    if isinstance(error, SettingsError):
        return _unparsable(error, os.environ if environ is None else environ)
    problems = []
    for detail in error.errors():
        variable, rest = env_name(detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        if rest:
            message = f"{rest}: {message}"
        secret = _SECRET.search(variable) or _SECRET.search(rest)
        if detail["type"] not in ("value_error", "missing") and not secret:
            message += f" (got {detail['input']!r})"
        if len(detail["loc"]) == 1 and isinstance(detail["input"], Mapping):
            variable += "__*"  # a check across the group's fields; the message names them
        problems.append(Problem(variable, message))
    return problems


def _unparsable(error: SettingsError, environ: Mapping[str, str]) -> list[Problem]:
    """A value pydantic-settings could not decode (JSON of a nested or list setting)."""
    match = _FIELD_OF_SETTINGS_ERROR.search(str(error))
    prefix = ENV_PREFIX + (match.group(1).upper() if match else "")
    problems = []
    for name, value in environ.items():
        if not name.upper().startswith(prefix) or value.lstrip()[:1] not in ("[", "{"):
            continue
        try:
            json.loads(value)
        except ValueError as exc:
            problems.append(Problem(name.upper(), f"not valid JSON: {exc}"))
    cause = error.__cause__
    return problems or [Problem(prefix + ("*" if match else ""), f"{error}: {cause}")]


def _group_of(annotation: object) -> type[BaseModel] | None:
    """The model a field holds (``ListenerSettings``, or ``X | None``), else None."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    candidates = typing.get_args(annotation) if union else (annotation,)
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if len(models) == 1 else None


def setting_names(
    model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX, *, groups: bool = True
) -> frozenset[str]:
    """Every variable pydantic-settings reads for ``model``, upper-case.

    A field is ``NEUROGATE_<FIELD>``, a field of a group (a model) ``NEUROGATE_<GROUP>__<FIELD>``;
    a group is also read whole, as a JSON object, under its own name (left out with
    ``groups=False``: the names the README documents).
    """
    names = set()
    for field, info in model.model_fields.items():
        name = prefix + field.upper()
        group = _group_of(info.annotation)
        if group is None or groups:
            names.add(name)
        if group is not None:
            names |= setting_names(group, name + _DELIMITER, groups=groups)
    return frozenset(names)


def unknown_settings(
    environ: Mapping[str, str], dotenv: Mapping[str, str | None] | None = None
) -> list[Problem]:
    """The ``NEUROGATE_*`` variables of ``environ`` and ``dotenv`` that name no setting.

    pydantic-settings reads only the names of fields (in any case) and ignores the rest, so a
    typo or a removed setting would be dropped silently. Each is one problem: a removed one
    says why it went, another the nearest valid name when one is close. The keys of a group's
    JSON object (``NEUROGATE_LISTENER='{"port": 104}'``) are checked the same way. Left alone:
    the test suite's variables (:data:`NOT_SETTINGS`, :data:`NOT_SETTINGS_PREFIX`) and, in a
    Kubernetes pod, those Kubernetes gives it for the namespace's Services.
    """
    known = setting_names()
    in_pod = "KUBERNETES_SERVICE_HOST" in environ
    seen: set[str] = set()
    problems = []
    for variables, where in ((environ, ""), (dotenv or {}, " (in .env)")):
        for name, value in variables.items():
            upper = name.upper()
            if not upper.startswith(ENV_PREFIX) or upper in seen:
                continue  # the environment wins over .env, as in pydantic-settings
            seen.add(upper)
            shown = (upper if where else name) + where  # .env's names come lower-cased
            if upper in known:
                problems += _unknown_keys(upper, value, shown)
            elif upper.startswith(NOT_SETTINGS_PREFIX) or upper in NOT_SETTINGS:
                continue
            elif not (in_pod and not where and _service_link(upper, value or "")):
                problems.append(Problem(shown, REMOVED_SETTINGS.get(upper) or _hint(upper)))
    return problems


def _service_link(name: str, value: str) -> bool:
    """Whether ``name=value`` is one of the variables Kubernetes gives a pod for a Service."""
    return any(
        suffix.search(name) and re.fullmatch(shape, value) for suffix, shape in _SERVICE_LINKS
    )


def _hint(name: str) -> str:
    """``not a setting``, with the nearest setting when one is close: within the group, when
    the name starts with one (``LISTENER__PORTT``), else among every name (``LISTNER__PORT``)."""
    group, delimiter, field = name.removeprefix(ENV_PREFIX).partition(_DELIMITER)
    info = Settings.model_fields.get(group.lower()) if delimiter else None
    model = _group_of(info.annotation) if info is not None else None
    if model is not None:
        prefix, word = f"{ENV_PREFIX}{group}{delimiter}", field
        candidates = [f.upper() for f in model.model_fields]
    else:
        prefix, word = ENV_PREFIX, name.removeprefix(ENV_PREFIX)
        candidates = [n.removeprefix(ENV_PREFIX) for n in setting_names(groups=False)]
    close = _nearest(word, candidates)
    if close is None:
        return "not a setting (the README's Settings table lists them)"
    return f"not a setting; did you mean {prefix}{close}?"


def _nearest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` (difflib, any case), if one is close."""
    by_lower = {c.lower(): c for c in candidates}
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[matches[0]] if matches else None


def _unknown_keys(variable: str, value: str | None, shown: str) -> list[Problem]:
    """Keys of a group's JSON object that are not its fields (pydantic would ignore them)."""
    model: type[BaseModel] | None = Settings
    for part in variable.removeprefix(ENV_PREFIX).lower().split(_DELIMITER):
        model = _group_of(model.model_fields[part].annotation) if model else None
    if model is None or not value or value.lstrip()[:1] != "{":
        return []
    try:
        data = json.loads(value)
    except ValueError:
        return []  # not JSON: pydantic-settings refuses the value itself
    problems = []
    for key in data if isinstance(data, dict) else {}:
        if key not in model.model_fields:
            close = _nearest(str(key), model.model_fields)
            hint = f"; did you mean {close!r}?" if close else ""
            problems.append(Problem(shown, f"{key!r} is not a setting of the group{hint}"))
    return problems


def load_settings() -> Settings:
    """Build the process's settings (:func:`neurogate.settings.get_settings`).

    Raises
    ------
    InvalidSettings
        Listing every problem with the environment and ``.env``: values that do not parse or
        cannot work, and variables that name no setting (:func:`unknown_settings`).
    """
    problems = unknown_settings(os.environ, DotEnvSettingsSource(Settings).env_vars)
    try:
        settings = get_settings()
    except (ValidationError, SettingsError) as exc:
        raise InvalidSettings(problems + problems_of(exc)) from exc
    if problems:
        raise InvalidSettings(problems)
    return settings
