"""Routing: which received studies this node analyses, with which models, how urgently, for whom.

The rules live in ``routing_rules.toml`` (``ROUTING__RULES_FILE`` names a site's own). They are
tried in order and the first whose conditions all hold decides: analyse (at ``stat`` or
``routine`` priority, with a named model set, for some or all export destinations) or ignore
(the study is "not for this node" and nobody analyses it). Every decision is recorded in
``routing_decisions`` with the rule that made it and the attributes it looked at.

The worker's router thread decides as studies arrive, ahead of the analyses, and forwards each
study to analyse to the ``stat`` or ``routine`` analysis topic; the analysis loop takes from the
``stat`` topic before each ``routine`` message (:class:`PriorityConsumer`), so a STAT study
overtakes the routine queue and waits at most for the analysis in hand.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from neurogate.bus import BusUnavailable, Consumer, Message, Publisher
from neurogate.bus.runner import PoisonMessage
from neurogate.db.models import RoutingAction, RoutingDecision
from neurogate.settings import Settings
from schemas.events import StudyReceived, parse_event
from schemas.topics import Topic

if TYPE_CHECKING:
    from inference_worker.pipeline import Models

log = logging.getLogger(__name__)

DEFAULT_RULES = Path(__file__).with_name("routing_rules.toml")
DEFAULT_MODEL_SET = "default"  # the models of MODELS__*
ROUTER_GROUP = "neurogate-router"
# A look at the stat topic before each routine message: short, but long enough for the Kafka
# client to make progress (group joins, fetches) on a consumer that is polled only this way.
_STAT_POLL_S = 0.05
_Named = TypeVar("_Named")  # an export destination: anything with a ``name``
# What a router reads of one instance per series (the event carries the rest).
_HEADER_TAGS = [
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "StudyDescription",
    "InstitutionName",
]


class Priority(StrEnum):
    STAT = "stat"  # overtakes routine work
    ROUTINE = "routine"


PRIORITY_TOPICS = {Priority.STAT: Topic.ANALYSIS_STAT, Priority.ROUTINE: Topic.ANALYSIS_ROUTINE}
STUDY_FIELDS = ("study_description", "institution", "called_ae", "calling_ae")
SERIES_FIELDS = ("modality", "body_part", "series_description")
_SCOPES = {"study": STUDY_FIELDS, "any_series": SERIES_FIELDS, "no_series": SERIES_FIELDS}
_RULE_KEYS = {"name", "action", "priority", "models", "destinations", *_SCOPES}


class RoutingRulesError(ValueError):
    """The rules file cannot be used; the message is one line naming the rule and field."""


@dataclass(frozen=True)
class SeriesFacts:
    modality: str = ""
    body_part: str = ""
    series_description: str = ""


@dataclass(frozen=True)
class StudyFacts:
    """The attributes rules look at, from the event and one stored header per series."""

    study_description: str = ""
    institution: str = ""
    called_ae: str = ""
    calling_ae: tuple[str, ...] = ()
    series: tuple[SeriesFacts, ...] = ()

    @classmethod
    def of(cls, event: StudyReceived, storage_root: Path) -> StudyFacts:
        series, study_description, institution = [], "", ""
        for summary in event.series:
            header = _first_header(storage_root / summary.path)
            study_description = study_description or _text(header, "StudyDescription")
            institution = institution or _text(header, "InstitutionName")
            series.append(
                SeriesFacts(
                    modality=summary.modality,
                    body_part=_text(header, "BodyPartExamined"),
                    series_description=summary.series_description,
                )
            )
        return cls(
            study_description=study_description,
            institution=institution,
            called_ae=event.called_ae_title,
            calling_ae=tuple(event.calling_ae_titles),
            series=tuple(series),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_description": self.study_description,
            "institution": self.institution,
            "called_ae": self.called_ae,
            "calling_ae": list(self.calling_ae),
            "series": [vars(s) for s in self.series],
        }


def _first_header(folder: Path) -> Any:
    """One instance's header of a series folder (``None`` when none can be read)."""
    for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else ():
        try:
            return dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError):
            continue
    return None


def _text(header: Any, keyword: str) -> str:
    value = header.get(keyword, "") if header is not None else ""
    return str(value or "").strip()


@dataclass(frozen=True)
class Rule:
    """One rule: conditions per scope (field -> pattern) and what it decides."""

    name: str
    action: str
    priority: Priority = Priority.ROUTINE
    model_set: str = DEFAULT_MODEL_SET
    destinations: tuple[str, ...] | None = None  # None: every destination
    study: Mapping[str, re.Pattern[str]] | None = None
    any_series: Mapping[str, re.Pattern[str]] | None = None
    no_series: Mapping[str, re.Pattern[str]] | None = None

    def matches(self, facts: StudyFacts) -> bool:
        if self.study and not all(
            any(p.search(v) for v in _study_values(facts, f)) for f, p in self.study.items()
        ):
            return False
        if self.any_series and not any(_series_matches(s, self.any_series) for s in facts.series):
            return False
        return not (
            self.no_series and any(_series_matches(s, self.no_series) for s in facts.series)
        )


def _study_values(facts: StudyFacts, field: str) -> tuple[str, ...]:
    """The values a study condition is matched against (any may match; none: the empty one)."""
    value = getattr(facts, field)
    if isinstance(value, tuple):
        return value or ("",)
    return (value,)


def _series_matches(series: SeriesFacts, conditions: Mapping[str, re.Pattern[str]]) -> bool:
    return all(pattern.search(getattr(series, f)) for f, pattern in conditions.items())


@dataclass(frozen=True)
class RoutingRules:
    """The parsed rules file: the rules in order and the named model sets."""

    rules: tuple[Rule, ...]
    # Set name -> task (models.registry.Task value) -> manifest overriding MODELS__<task>.
    model_sets: Mapping[str, Mapping[str, Path]]

    @classmethod
    def from_toml(
        cls, data: dict[str, Any], *, base: Path, destinations: Sequence[str]
    ) -> RoutingRules:
        """Validate ``data``; ``base`` resolves relative manifest paths; ``destinations`` are
        the names a rule may send to (``EXPORT__DESTINATIONS``).

        Raises
        ------
        RoutingRulesError
            One line naming the rule (by name and position) and the field at fault.
        """
        unknown = set(data) - {"rule", "model_sets"}
        if unknown:
            raise RoutingRulesError(f"unknown top-level keys {sorted(unknown)}")
        model_sets = _model_sets(data.get("model_sets", {}), base)
        specs = data.get("rule")
        if not isinstance(specs, list) or not specs:
            raise RoutingRulesError("no [[rule]] tables: at least one rule is needed")
        rules, names = [], set()
        for index, spec in enumerate(specs, start=1):
            rule = _rule(spec, index, model_sets, destinations)
            if rule.name in names:
                raise RoutingRulesError(f"rule {index}: name {rule.name!r} is used twice")
            names.add(rule.name)
            rules.append(rule)
        return cls(tuple(rules), model_sets)


def _rule(
    spec: Any, index: int, model_sets: Mapping[str, Any], destinations: Sequence[str]
) -> Rule:
    if not isinstance(spec, dict):
        raise RoutingRulesError(f"rule {index}: not a table")
    name = spec.get("name")
    where = f"rule {index} ({name!r})" if isinstance(name, str) else f"rule {index}"
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise RoutingRulesError(f"{where}, name: a name of 1-64 characters is required")
    if unknown := sorted(set(spec) - _RULE_KEYS):
        raise RoutingRulesError(f"{where}: unknown keys {unknown}; known: {sorted(_RULE_KEYS)}")
    action = spec.get("action")
    if action not in (RoutingAction.ANALYSE, RoutingAction.IGNORE):
        raise RoutingRulesError(f"{where}, action: {action!r}, expected 'analyse' or 'ignore'")
    try:
        priority = Priority(spec.get("priority", Priority.ROUTINE))
    except ValueError:
        raise RoutingRulesError(
            f"{where}, priority: {spec['priority']!r}, expected 'stat' or 'routine'"
        ) from None
    model_set = spec.get("models", DEFAULT_MODEL_SET)
    if model_set != DEFAULT_MODEL_SET and model_set not in model_sets:
        raise RoutingRulesError(
            f"{where}, models: no model set {model_set!r} (defined: "
            f"{', '.join([DEFAULT_MODEL_SET, *model_sets])})"
        )
    sent_to = spec.get("destinations")
    if sent_to is not None:
        if not isinstance(sent_to, list) or not all(isinstance(d, str) for d in sent_to):
            raise RoutingRulesError(f"{where}, destinations: a list of destination names")
        if missing := [d for d in sent_to if d not in destinations]:
            raise RoutingRulesError(
                f"{where}, destinations: {missing} not in NEUROGATE_EXPORT__DESTINATIONS "
                f"({', '.join(destinations) or 'none configured'})"
            )
    if action == RoutingAction.IGNORE and {"priority", "models", "destinations"} & set(spec):
        raise RoutingRulesError(f"{where}: an 'ignore' rule takes no priority/models/destinations")
    scopes = {scope: _conditions(spec.get(scope), where, scope) for scope in _SCOPES}
    return Rule(
        name=name,
        action=action,
        priority=priority,
        model_set=model_set,
        destinations=None if sent_to is None else tuple(sent_to),
        **scopes,
    )


def _conditions(table: Any, where: str, scope: str) -> dict[str, re.Pattern[str]] | None:
    if table is None:
        return None
    if not isinstance(table, dict) or not table:
        raise RoutingRulesError(f"{where}, {scope}: a table of field = pattern")
    conditions = {}
    for field, pattern in table.items():
        if field not in _SCOPES[scope]:
            raise RoutingRulesError(
                f"{where}, {scope}.{field}: unknown field; known: {', '.join(_SCOPES[scope])}"
            )
        if not isinstance(pattern, str):
            raise RoutingRulesError(f"{where}, {scope}.{field}: a pattern (string) is needed")
        try:
            conditions[field] = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise RoutingRulesError(f"{where}, {scope}.{field}: invalid pattern: {exc}") from None
    return conditions


def _model_sets(table: Any, base: Path) -> dict[str, dict[str, Path]]:
    from models.registry import Task

    if not isinstance(table, dict):
        raise RoutingRulesError("model_sets: a table of [model_sets.<name>]")
    sets: dict[str, dict[str, Path]] = {}
    for name, tasks in table.items():
        if name == DEFAULT_MODEL_SET or not isinstance(tasks, dict) or not tasks:
            raise RoutingRulesError(
                f"model_sets.{name}: a table of task = manifest, not named {DEFAULT_MODEL_SET!r}"
            )
        sets[name] = {}
        for task, manifest in tasks.items():
            if task not in {t.value for t in Task}:
                raise RoutingRulesError(
                    f"model_sets.{name}.{task}: unknown task; known: {', '.join(Task)}"
                )
            path = base / str(manifest)
            if not path.is_file():
                raise RoutingRulesError(f"model_sets.{name}.{task}: no manifest {path}")
            sets[name][task] = path
    return sets


def load_routing_rules(settings: Settings) -> RoutingRules:
    """The node's rules (``ROUTING__RULES_FILE``, else the shipped file), validated.

    Raises
    ------
    RoutingRulesError
        One line naming the file and the rule and field at fault.
    """
    path = settings.routing.rules_file or DEFAULT_RULES
    destinations = [d.name for d in settings.export.destinations]
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        return RoutingRules.from_toml(data, base=path.parent, destinations=destinations)
    except OSError as exc:
        raise RoutingRulesError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RoutingRulesError(f"{path}: not valid TOML: {exc}") from None
    except RoutingRulesError as exc:
        raise RoutingRulesError(f"{path}: {exc}") from None


def load_model_sets(rules: RoutingRules, default: Models) -> dict[str, Models]:
    """Every model set the rules name, loaded once; tasks a set does not override share the
    default set's loaded models."""
    from inference_worker.pipeline import Models
    from models.classification import location
    from models.registry import Task, manifest_for

    sets = {DEFAULT_MODEL_SET: default}
    for name, overrides in rules.model_sets.items():
        manifests, loaded = dict(default.manifests), dict(default.loaded)
        for task_name, path in overrides.items():
            task = Task(task_name)
            manifests[task] = manifest_for(task, path)
            loaded[task] = Models.load_all({task: manifests[task]}).loaded[task]
        classifier = manifests.get(Task.CLASSIFICATION)
        where = None
        if classifier is not None and classifier.location:
            where = default.location_model or location.load()
        sets[name] = Models(manifests, loaded, where)
    return sets


@dataclass(frozen=True)
class Decision:
    rule: str | None
    action: str
    priority: Priority
    model_set: str
    destinations: tuple[str, ...] | None
    reason: str


def decide(rules: RoutingRules, facts: StudyFacts) -> Decision:
    """The first matching rule's decision; no rule matching means "not for this node"."""
    for rule in rules.rules:
        if rule.matches(facts):
            verb = "analyse" if rule.action == RoutingAction.ANALYSE else "not for this node"
            return Decision(
                rule=rule.name,
                action=rule.action,
                priority=rule.priority,
                model_set=rule.model_set,
                destinations=rule.destinations,
                reason=f"{verb}: rule {rule.name!r}",
            )
    return Decision(
        None, RoutingAction.IGNORE, Priority.ROUTINE, DEFAULT_MODEL_SET, None,
        "not for this node: no rule matched",
    )  # fmt: skip


def decision_for(session: Session, event_id: str) -> RoutingDecision | None:
    """The recorded decision for a request event (``None``: it was not routed, e.g. an upload)."""
    return session.scalar(
        select(RoutingDecision).where(RoutingDecision.request_event_id == event_id)
    )


def routed_destinations(
    decision: RoutingDecision | None, destinations: Sequence[_Named]
) -> list[_Named]:
    """The export destinations (objects with a ``name``) a decision sends results to."""
    if decision is None or decision.destinations is None:
        return list(destinations)
    chosen = set(decision.destinations)
    return [d for d in destinations if getattr(d, "name", None) in chosen]


class Router:
    """The consume-loop handler that decides for each received study and queues it.

    Parameters
    ----------
    settings
        Storage root (to read one header per series).
    rules
        Validated at start (:func:`load_routing_rules`).
    sessions
        Database session factory (decisions are recorded before the study is queued).
    publisher
        Where studies to analyse go: the ``stat`` or ``routine`` analysis topic.
    stop
        Set when the service stops; a forward that cannot reach the bus gives up then, and
        the study is routed again after the restart.
    """

    def __init__(
        self,
        settings: Settings,
        rules: RoutingRules,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        stop: threading.Event,
        *,
        retry_s: float = 1.0,
    ) -> None:
        self._root = settings.storage_root
        self._rules = rules
        self._sessions = sessions
        self._publisher = publisher
        self._stop = stop
        self._retry_s = retry_s

    def handle(self, message: Message) -> None:
        try:
            event = parse_event(message.value)
        except ValueError as exc:
            raise PoisonMessage(str(exc)) from exc
        if not isinstance(event, StudyReceived):
            raise PoisonMessage(f"unexpected {event.event_type} on {message.topic}")
        row = self._record(event)
        extra = {
            "study_uid": event.study_instance_uid,
            "rule": row.rule,
            "priority": row.priority,
            "action": row.action,
        }
        if row.action != RoutingAction.ANALYSE:
            log.info("study not for this node; not analysed", extra=extra)
            return
        self._forward(PRIORITY_TOPICS[Priority(row.priority)], message)
        log.info("study queued for analysis", extra=extra)

    def _record(self, event: StudyReceived) -> RoutingDecision:
        """The event's decision: the one recorded (a redelivery), else made and recorded now."""
        key = str(event.event_id)
        with self._sessions() as session:
            if (known := decision_for(session, key)) is not None:
                return known
        facts = StudyFacts.of(event, self._root)
        decision = decide(self._rules, facts)
        row = RoutingDecision(
            request_event_id=key,
            study_instance_uid=event.study_instance_uid,
            revision=event.revision,
            rule=decision.rule,
            action=decision.action,
            priority=decision.priority.value,
            model_set=decision.model_set,
            destinations=None if decision.destinations is None else list(decision.destinations),
            reason=decision.reason,
            facts=facts.to_dict(),
            decided_at=dt.datetime.now(dt.UTC),
        )
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:  # another router recorded it meanwhile: theirs stands
            with self._sessions() as session:
                known = decision_for(session, key)
                if known is None:
                    raise
                return known
        return row

    def _forward(self, topic: str, message: Message) -> None:
        """The study's event, unchanged (same event id), on the priority's analysis topic."""
        while True:
            try:
                self._publisher.publish(topic, message.key, message.value, dict(message.headers))
                return
            except BusUnavailable as exc:
                log.warning("cannot queue the study yet", extra={"error": str(exc)})
                if self._stop.wait(self._retry_s):
                    raise  # not committed: routed again (same decision) after the restart


class PriorityConsumer:
    """Two consumers as one: the ``stat`` one is drained before each ``routine`` message.

    Routine messages are taken one at a time, so that a STAT study that arrives while a
    routine one is analysed is the next one analysed. Commits go to the consumer the message
    came from.
    """

    def __init__(self, stat: Consumer, routine: Consumer, stat_topics: Sequence[str]) -> None:
        self._stat, self._routine = stat, routine
        self._stat_topics = frozenset(stat_topics)

    def poll(self, timeout_s: float, max_messages: int = 16) -> list[Message]:
        urgent = self._stat.poll(_STAT_POLL_S, max_messages)
        if urgent:
            return urgent
        return self._routine.poll(timeout_s, 1)

    def commit(self, message: Message) -> None:
        target = self._stat if message.topic in self._stat_topics else self._routine
        target.commit(message)

    def close(self) -> None:
        self._stat.close()
        self._routine.close()
