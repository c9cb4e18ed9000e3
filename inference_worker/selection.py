"""Series selection: which series of a study is T1, T1CE, T2 and FLAIR, and why.

The rules live in ``series_rules.toml`` (a site may point ``load_rules`` at its own file): what
never qualifies, how post-contrast is recognised, and per role the text and acquisition
parameters that identify it. Each choice carries the reasons it was made, so that the result
can say what was analysed and a radiologist can check it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

DEFAULT_RULES = Path(__file__).with_name("series_rules.toml")
_AXIAL_MIN_COSINE = 0.85  # slice normal within ~30 degrees of the patient's z axis


class Role(StrEnum):
    T1 = "T1"
    T1CE = "T1CE"
    T2 = "T2"
    FLAIR = "FLAIR"


class Contrast(StrEnum):
    PRE = "pre"
    POST = "post"
    ANY = "any"


@dataclass(frozen=True)
class SeriesInfo:
    """The attributes selection looks at, read from one instance of a series."""

    series_instance_uid: str
    modality: str
    description: str = ""
    protocol: str = ""
    image_type: tuple[str, ...] = ()
    scanning_sequence: tuple[str, ...] = ()
    inversion_time_ms: float | None = None
    contrast_agent: str = ""
    acquisition_type: str = ""
    orientation: str = "unknown"  # axial, sagittal, coronal, oblique or unknown
    slices: int = 0
    series_number: int | None = None

    @property
    def text(self) -> str:
        """Description and protocol name, with underscores as spaces so that word boundaries
        work on vendor names such as ``t1_mprage_sag_p2_iso``."""
        return f"{self.description} {self.protocol}".replace("_", " ").strip()

    @classmethod
    def from_dataset(cls, ds: Dataset, *, slices: int) -> SeriesInfo:
        """Describe a series from one of its instances and its number of slices (or frames)."""

        def values(keyword: str) -> tuple[str, ...]:
            value = ds.get(keyword)
            if value in (None, ""):
                return ()
            items = [value] if isinstance(value, str) else list(value)
            return tuple(str(v).upper() for v in items)

        inversion = ds.get("InversionTime")
        number = ds.get("SeriesNumber")
        return cls(
            series_instance_uid=str(ds.SeriesInstanceUID),
            modality=str(ds.get("Modality", "")),
            description=str(ds.get("SeriesDescription", "")),
            protocol=str(ds.get("ProtocolName", "")),
            image_type=values("ImageType"),
            scanning_sequence=values("ScanningSequence"),
            inversion_time_ms=float(inversion) if inversion not in (None, "") else None,
            contrast_agent=str(ds.get("ContrastBolusAgent", "")).strip(),
            acquisition_type=str(ds.get("MRAcquisitionType", "")).upper(),
            orientation=orientation_of(ds.get("ImageOrientationPatient")),
            slices=slices,
            series_number=int(number) if number not in (None, "") else None,
        )


def orientation_of(iop: Sequence[float] | None) -> str:
    """``axial``, ``sagittal``, ``coronal`` or ``oblique`` from ImageOrientationPatient."""
    if not iop or len(iop) != 6:
        return "unknown"
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < _AXIAL_MIN_COSINE:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class RoleRule:
    role: Role
    text: re.Pattern[str]
    contrast: Contrast
    not_text: re.Pattern[str] | None = None
    inversion_time_ms: tuple[float, float] | None = None


@dataclass(frozen=True)
class SeriesRules:
    """The parsed rules file; constructing it validates every pattern and value."""

    modality: str
    exclude_text: re.Pattern[str]
    exclude_image_types: frozenset[str]
    min_slices: int
    post_contrast_text: re.Pattern[str]
    pre_contrast_text: re.Pattern[str]
    roles: tuple[RoleRule, ...]
    weights: dict[str, float]

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> SeriesRules:
        try:
            exclude, contrast, scoring = data["exclude"], data["contrast"], data["scoring"]
            roles = tuple(
                RoleRule(
                    role=Role(name),
                    text=re.compile(spec["text"]),
                    contrast=Contrast(spec.get("contrast", "any")),
                    not_text=re.compile(spec["not_text"]) if "not_text" in spec else None,
                    inversion_time_ms=_range(spec.get("inversion_time_ms")),
                )
                for name, spec in data["roles"].items()
            )
            return cls(
                modality=exclude["modalities_other_than"],
                exclude_text=re.compile(exclude["text"]),
                exclude_image_types=frozenset(t.upper() for t in exclude["image_type"]),
                min_slices=int(exclude["min_slices"]),
                post_contrast_text=re.compile(contrast["post"]),
                pre_contrast_text=re.compile(contrast["pre"]),
                roles=roles,
                weights={k: float(v) for k, v in scoring.items()},
            )
        except (KeyError, re.error, ValueError, TypeError) as exc:
            raise ValueError(f"invalid series rules: {exc!r}") from exc


def _range(value: list[float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"empty range {value}")
    return low, high


def load_rules(path: Path = DEFAULT_RULES) -> SeriesRules:
    with path.open("rb") as fh:
        return SeriesRules.from_toml(tomllib.load(fh))


@dataclass(frozen=True)
class Choice:
    role: Role
    series_instance_uid: str
    score: float
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    """The outcome: a series per role found, the roles missing, and why others were set aside."""

    chosen: dict[Role, Choice]
    missing: tuple[Role, ...]
    rejected: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": {
                role.value: {
                    "series_instance_uid": c.series_instance_uid,
                    "score": c.score,
                    "reasons": list(c.reasons),
                }
                for role, c in self.chosen.items()
            },
            "missing": [r.value for r in self.missing],
            "rejected": dict(self.rejected),
        }


def is_post_contrast(series: SeriesInfo, rules: SeriesRules) -> bool:
    if series.contrast_agent:
        return True
    return bool(
        rules.post_contrast_text.search(series.text)
    ) and not rules.pre_contrast_text.search(series.text)


def _rejection(series: SeriesInfo, rules: SeriesRules) -> str | None:
    if series.modality != rules.modality:
        return f"modality {series.modality or 'missing'}, not {rules.modality}"
    if match := rules.exclude_text.search(series.text):
        return f"excluded by its description ({match.group(0)!r})"
    if excluded := rules.exclude_image_types.intersection(series.image_type):
        return f"excluded image type {sorted(excluded)}"
    if series.slices < rules.min_slices:
        return f"{series.slices} slices, fewer than {rules.min_slices}"
    return None


def _score(
    series: SeriesInfo, rule: RoleRule, rules: SeriesRules
) -> tuple[float, list[str]] | None:
    weights = rules.weights
    post = is_post_contrast(series, rules)
    if rule.contrast is Contrast.POST and not post:
        return None
    if rule.contrast is Contrast.PRE and post:
        return None
    if rule.not_text is not None and rule.not_text.search(series.text):
        return None
    score, reasons = 0.0, []
    if match := rule.text.search(series.text):
        score += weights["text_match"]
        reasons.append(f"description matches {match.group(0)!r}")
    elif (
        rule.inversion_time_ms is not None
        and series.inversion_time_ms is not None
        and rule.inversion_time_ms[0] <= series.inversion_time_ms <= rule.inversion_time_ms[1]
    ):
        score += weights["parameter_match"]
        reasons.append(f"inversion time {series.inversion_time_ms:g} ms")
    else:
        return None
    if rule.contrast is not Contrast.ANY:
        reasons.append("post-contrast" if post else "no contrast")
    if "ORIGINAL" in series.image_type:
        score += weights["original_image"]
        reasons.append("original image")
    if series.acquisition_type == "3D":
        score += weights["three_d"]
        reasons.append("3D acquisition")
    if series.orientation == "axial":
        score += weights["axial"]
    reasons.append(f"{series.orientation}, {series.slices} slices")
    score += weights["per_100_slices"] * series.slices / 100
    return score, reasons


def select_series(series: Iterable[SeriesInfo], rules: SeriesRules | None = None) -> Selection:
    """Assign at most one series to each role and each series to at most one role."""
    rules = rules or load_rules()
    rejected: dict[str, str] = {}
    candidates: list[tuple[float, Role, SeriesInfo, list[str]]] = []
    for info in series:
        if reason := _rejection(info, rules):
            rejected[info.series_instance_uid] = reason
            continue
        for rule in rules.roles:
            scored = _score(info, rule, rules)
            if scored is not None:
                candidates.append((scored[0], rule.role, info, scored[1]))
    chosen: dict[Role, Choice] = {}
    taken: set[str] = set()
    for score, role, info, reasons in sorted(
        candidates, key=lambda c: (-c[0], c[2].series_instance_uid)
    ):
        if role in chosen or info.series_instance_uid in taken:
            continue
        chosen[role] = Choice(role, info.series_instance_uid, round(score, 2), tuple(reasons))
        taken.add(info.series_instance_uid)
    missing = tuple(role for role in Role if role not in chosen)
    return Selection(chosen=dict(sorted(chosen.items())), missing=missing, rejected=rejected)
