"""Settings problems as an operator reads them: one line per problem, naming the variable.

A node that cannot run with its settings should say so before it loads models or opens ports,
and say it in the terms the operator set it in (``NEUROGATE_API__ADMIN_PASSWORD``), not as
pydantic's error locations or a traceback from a thread.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import ValidationError
from pydantic_settings import SettingsError

from neurogate.settings import Settings, get_settings

ENV_PREFIX = "NEUROGATE_"
_SECRET = re.compile(r"password|secret|token|key", re.IGNORECASE)
_FIELD_OF_SETTINGS_ERROR = re.compile(r'field "([^"]+)"')


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


def load_settings() -> Settings:
    """Build the process's settings (:func:`neurogate.settings.get_settings`).

    Raises
    ------
    InvalidSettings
        Listing every problem with the environment and ``.env``.
    """
    try:
        return get_settings()
    except (ValidationError, SettingsError) as exc:
        raise InvalidSettings(problems_of(exc)) from exc
