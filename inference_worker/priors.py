"""Priors from the PACS for follow-up: the patient's previous brain MR study, analysed and compared.

When a study received through the listener has been analysed, the worker asks the configured PACS
(``PRIORS__*``) for the patient's earlier MR studies (C-FIND, Study Root, by Patient ID, within
the look-back window, before the study's date), keeps the brain studies (Study Description),
and takes the most recent ``max_priors``. A prior with no completed analysis in this node is
retrieved (C-MOVE to the listener, which stores and assembles it as any other study) and analysed
here and now, as its own analysis with its own results, so the comparison never waits for a
queue that this very worker is serving. The current study's findings then carry the tumour
volumes of both and their change (:class:`~schemas.findings.PriorComparison`), which the SR, the
PDF and the API report; when there is nothing to compare, ``Findings.skipped`` says why.

The analysis of a retrieved prior is keyed by a request id derived from its Study Instance UID
and revision (:func:`prior_event_id`), so the listener's own ``StudyReceived`` for it, which
arrives once its quiet period ends, finds it analysed (:func:`analysed_as_prior`) and is not
analysed a second time. A prior is never compared with its own priors.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    EnhancedMRImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from inference_worker.analysis import REGIONS, Analysis
from inference_worker.exporter import AssociationRefused, open_association
from inference_worker.results.common import tumour_found
from neurogate.db.models import Analysis as AnalysisRow
from neurogate.db.models import AnalysisStatus, Study, StudyStatus
from neurogate.settings import PriorSettings, Settings
from schemas.events import CompletionTrigger, SeriesSummary, StudyReceived
from schemas.findings import Findings, PriorComparison, VolumeChange

log = logging.getLogger(__name__)

STAGE = "follow-up"  # the key of Findings.skipped that says why there is no comparison
# Request ids of analyses of retrieved priors: uuid5(PRIOR_NAMESPACE, "<study uid>/<revision>").
PRIOR_NAMESPACE = uuid.UUID("5d0f3c1e-8a47-4f7e-9a43-2b9f6e0c7a11")
# DIMSE statuses of C-FIND and C-MOVE responses (PS3.4 C.4.1.1.4, C.4.2.1.5).
SUCCESS = 0x0000
PENDING = frozenset({0xFF00, 0xFF01})
SUBOPERATIONS_FAILED = 0xB000  # C-MOVE: one or more instances did not reach the destination
DA_FORMAT = "%Y%m%d"
# What a C-GET takes of a prior (SCP role): the MR images the analysis reads. Other objects of
# the study (earlier results, reports) are refused and counted as failed sub-operations.
GET_STORAGE_CLASSES = (MRImageStorage, EnhancedMRImageStorage)


class PacsUnavailable(Exception):
    """The PACS could not be asked, or refused the query or the retrieval."""


class PriorNotAnalysed(Exception):
    """A prior study was found but could not be retrieved or analysed."""


@dataclass(frozen=True)
class PriorStudy:
    study_instance_uid: str
    study_date: str | None  # DA
    study_description: str
    in_pacs: bool = True  # False: only this node holds it


def prior_event_id(study_uid: str, revision: int) -> uuid.UUID:
    """The request id of the analysis of a prior retrieved for follow-up."""
    return uuid.uuid5(PRIOR_NAMESPACE, f"{study_uid}/{revision}")


def analysed_as_prior(sessions: sessionmaker[Session], event: StudyReceived) -> bool:
    """Whether this completion of a study was already analysed (or is being) as someone's prior."""
    key = str(prior_event_id(event.study_instance_uid, event.revision))
    with sessions() as session:
        status = session.scalar(
            select(AnalysisRow.status).where(AnalysisRow.request_event_id == key)
        )
    return status in (AnalysisStatus.COMPLETED, AnalysisStatus.RUNNING)


def tumour_volumes(findings: Findings) -> dict[str, float] | None:
    """WT, TC and ET in mL for a comparison; 0 without a tumour; None when they are unknown."""
    if findings.detection is None:
        return None
    if not tumour_found(findings):
        return dict.fromkeys(REGIONS, 0.0)
    if findings.segmentation is None:
        return None
    volumes = findings.segmentation.volumes_ml
    return {r: float(volumes[r]) for r in REGIONS if r in volumes}


def _date(value: str | None) -> dt.date | None:
    try:
        return dt.datetime.strptime((value or "").strip(), DA_FORMAT).date()
    except ValueError:
        return None


class PriorsPacs:
    """Query/retrieve SCU of the priors PACS (Study Root C-FIND and C-MOVE)."""

    def __init__(
        self, settings: PriorSettings, listener_ae_title: str, listener_port: int = 11112
    ) -> None:
        if settings.ae_title is None:
            raise ValueError("priors: no PACS configured (PRIORS__AE_TITLE)")
        self._settings = settings
        self._called = settings.ae_title
        self._destination = settings.move_destination or listener_ae_title
        self._listener_port = listener_port
        self._description = re.compile(settings.study_description_pattern, re.IGNORECASE)

    @property
    def name(self) -> str:
        s = self._settings
        return f"{self._called}@{s.host}:{s.port}"

    @contextmanager
    def _association(
        self,
        context: str,
        dimse_timeout: float,
        storage: Sequence[str] = (),
        handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
    ) -> Iterator[Association]:
        """An association with the PACS for ``context``; ``storage``: classes taken as SCP."""
        settings = self._settings
        ae = AE(ae_title=settings.calling_ae_title)
        ae.acse_timeout = ae.network_timeout = settings.timeout_seconds
        ae.dimse_timeout = dimse_timeout
        ae.add_requested_context(context)
        for sop_class in storage:
            ae.add_requested_context(sop_class)
        try:
            assoc = open_association(
                ae,
                settings.host,
                settings.port,
                self._called,
                ext_neg=[build_role(sop_class, scp_role=True) for sop_class in storage],
                evt_handlers=handlers,
            )
        except AssociationRefused as exc:
            raise PacsUnavailable(f"{exc}: {self.name}") from exc
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def find(self, patient_id: str, before: dt.date) -> list[PriorStudy]:
        """The patient's brain MR studies dated within the look-back window before ``before``.

        Most recent first. A study of the same day as ``before`` is not a prior.
        """
        first = before - dt.timedelta(days=self._settings.lookback_days)
        last = before - dt.timedelta(days=1)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient_id
        query.StudyDate = f"{first.strftime(DA_FORMAT)}-{last.strftime(DA_FORMAT)}"
        query.ModalitiesInStudy = "MR"
        for keyword in ("StudyInstanceUID", "StudyTime", "StudyDescription"):
            setattr(query, keyword, "")
        found: list[PriorStudy] = []
        with self._association(
            StudyRootQueryRetrieveInformationModelFind, self._settings.timeout_seconds
        ) as assoc:
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                code = _status(status, "C-FIND", self.name)
                if code in PENDING and identifier is not None:
                    prior = self._prior(identifier, patient_id)
                    if prior is not None:
                        found.append(prior)
                elif code != SUCCESS:
                    raise PacsUnavailable(f"C-FIND failed with status 0x{code:04X}: {self.name}")
        found.sort(key=lambda p: p.study_date or "", reverse=True)
        return found

    def _prior(self, identifier: Dataset, patient_id: str) -> PriorStudy | None:
        uid = str(identifier.get("StudyInstanceUID", "") or "")
        description = str(identifier.get("StudyDescription", "") or "")
        if not uid or str(identifier.get("PatientID", patient_id) or patient_id) != patient_id:
            return None  # a PACS answering for another patient is not believed
        if description and not self._description.search(description):
            return None  # an MR of another body part
        return PriorStudy(uid, str(identifier.get("StudyDate", "") or "") or None, description)

    def retrieve(self, study_uid: str, spool: Path) -> int:
        """Bring the study into the listener (C-MOVE, or C-GET and C-STORE); how many instances.

        Parameters
        ----------
        spool
            A folder for C-GET to hold the instances in until they are stored in the listener.
        """
        if self._settings.retrieve_method == "c-get":
            return self._get(study_uid, spool)
        return self._move(study_uid)

    def _move(self, study_uid: str) -> int:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        with self._association(
            StudyRootQueryRetrieveInformationModelMove, self._settings.retrieve_timeout_seconds
        ) as assoc:
            for status, _ in assoc.send_c_move(
                query, self._destination, StudyRootQueryRetrieveInformationModelMove
            ):
                code = _status(status, "C-MOVE", self.name)
                if code in PENDING:
                    continue
                completed = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
                failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
                if code == SUCCESS:
                    return completed
                if code == SUBOPERATIONS_FAILED:
                    raise PriorNotAnalysed(
                        f"the PACS sent {completed} instances to {self._destination}, "
                        f"{failed} failed"
                    )
                raise PacsUnavailable(
                    f"C-MOVE to {self._destination} failed with status 0x{code:04X}: {self.name}"
                )
        raise PacsUnavailable(f"C-MOVE ended without a final status: {self.name}")

    def _get(self, study_uid: str, spool: Path) -> int:
        """C-GET the study into ``spool`` (as received), then C-STORE each file to the listener."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        received: list[Path] = []
        spool.mkdir(parents=True, exist_ok=True)

        def on_store(event: Event) -> int:
            path = spool / f"{len(received):06d}.dcm"
            path.write_bytes(event.encoded_dataset())
            received.append(path)
            return SUCCESS

        with self._association(
            StudyRootQueryRetrieveInformationModelGet,
            self._settings.retrieve_timeout_seconds,
            storage=GET_STORAGE_CLASSES,
            handlers=[(evt.EVT_C_STORE, on_store)],
        ) as assoc:
            for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                code = _status(status, "C-GET", self.name)
                if code in PENDING:
                    continue
                failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
                if code not in (SUCCESS, SUBOPERATIONS_FAILED):
                    raise PacsUnavailable(f"C-GET failed with status 0x{code:04X}: {self.name}")
                if failed:
                    log.warning(
                        "C-GET: instances of classes not taken",
                        extra={"study_uid": study_uid, "failed": failed},
                    )
                break
        if not received:
            raise PriorNotAnalysed(f"the PACS sent no instance of the study by C-GET: {self.name}")
        return self._store_in_listener(received)

    def _store_in_listener(self, files: list[Path]) -> int:
        """C-STORE ``files`` to the listener, bytes as received; how many it stored."""
        settings = self._settings
        headers = [dcmread(f, stop_before_pixels=True) for f in files]
        ae = AE(ae_title=settings.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.timeout_seconds
        for sop_class, syntax in sorted(
            {(str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in headers}
        ):
            ae.add_requested_context(sop_class, syntax)
        port = settings.listener_port or self._listener_port
        assoc = ae.associate(settings.listener_host, port, ae_title=self._destination)
        if not assoc.is_established:
            raise PriorNotAnalysed(f"the listener at {settings.listener_host}:{port} refused")
        stored = 0
        try:
            for path in files:
                status = assoc.send_c_store(path)
                if int(status.get("Status", -1)) == SUCCESS:
                    stored += 1
        finally:
            if assoc.is_established:
                assoc.release()
        if stored < len(files):
            raise PriorNotAnalysed(f"the listener stored {stored} of {len(files)} instances")
        return stored


def _status(status: Dataset, operation: str, pacs: str) -> int:
    if "Status" not in status:  # pynetdicom's empty dataset: timeout, abort or bad response
        raise PacsUnavailable(
            f"{operation}: no answer (a timeout, or the PACS aborted: does it know this node's "
            f"AE title as a modality?): {pacs}"
        )
    return int(status.Status)


class FollowUp:
    """Adds the comparison with the most recent prior to a study's analysis.

    Parameters
    ----------
    analyse
        Analyses a prior study as its own analysis (claim, pipeline, results), given the event
        that stands for its completion; the worker's own steps.
    pacs
        The query/retrieve peer; by default built from ``settings.priors``.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        analyse: Callable[[StudyReceived], None],
        pacs: PriorsPacs | None = None,
    ) -> None:
        self._settings = settings.priors
        self._root = settings.storage_root
        self._sessions = sessions
        self._analyse = analyse
        self._spool = settings.data_dir / "priors"
        self._pacs = pacs or PriorsPacs(
            settings.priors, settings.listener.ae_title, settings.listener.port
        )

    def attach(self, analysis: Analysis) -> Analysis:
        """``analysis`` with ``findings.prior`` set, or ``skipped["follow-up"]`` saying why not."""
        findings = analysis.findings
        uid = findings.study_instance_uid
        try:
            comparison = self._compare(findings)
        except (PacsUnavailable, PriorNotAnalysed) as exc:
            level = logging.WARNING if isinstance(exc, PacsUnavailable) else logging.INFO
            log.log(level, "no follow-up comparison", extra={"study_uid": uid, "reason": str(exc)})
            skipped = {**findings.skipped, STAGE: str(exc)}
            return dataclasses.replace(
                analysis, findings=findings.model_copy(update={"skipped": skipped})
            )
        log.info(
            "follow-up comparison",
            extra={
                "study_uid": uid,
                "prior_study_uid": comparison.prior_study_instance_uid,
                "retrieved": comparison.retrieved,
            },
        )
        return dataclasses.replace(
            analysis, findings=findings.model_copy(update={"prior": comparison})
        )

    def _compare(self, findings: Findings) -> PriorComparison:
        uid = findings.study_instance_uid
        with self._sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
            patient_id = study.patient_id if study is not None else None
            study_date = study.study_date if study is not None else None
        when = _date(study_date)
        if not patient_id or when is None:
            raise PriorNotAnalysed("the study has no Patient ID or Study Date to find priors by")
        current = tumour_volumes(findings)
        if current is None:
            raise PriorNotAnalysed(
                "this study's tumour volumes are unknown (segmentation did not run)"
            )
        priors = self._candidates(patient_id, when, uid)
        if not priors:
            raise PriorNotAnalysed(
                f"no prior brain MR study of the patient within {self._settings.lookback_days} "
                f"days in {self._pacs.name} or this node"
            )
        prior, compared = priors[0], None
        errors = []
        for candidate in priors:  # the most recent first; older ones for the follow-up history
            try:
                analysed = self._analysed(candidate)
            except (PacsUnavailable, PriorNotAnalysed) as exc:
                errors.append(f"{candidate.study_instance_uid}: {exc}")
                continue
            if candidate is prior:
                compared = analysed
        if compared is None:
            raise PriorNotAnalysed(f"the most recent prior could not be analysed: {errors[0]}")
        analysis_id, retrieved, prior_findings = compared
        previous = tumour_volumes(prior_findings)
        if previous is None:
            raise PriorNotAnalysed(
                f"the prior {prior.study_instance_uid}'s tumour volumes are unknown "
                "(segmentation did not run on it)"
            )
        return PriorComparison(
            prior_study_instance_uid=prior.study_instance_uid,
            prior_study_date=prior.study_date,
            current_study_date=study_date,
            prior_analysis_id=analysis_id,
            retrieved=retrieved,
            regions={
                r: VolumeChange.between(previous[r], current[r])
                for r in REGIONS
                if r in previous and r in current
            },
            other_priors={p.study_instance_uid: p.study_date for p in priors[1:]},
        )

    def _candidates(self, patient_id: str, before: dt.date, current_uid: str) -> list[PriorStudy]:
        """The PACS's priors and this node's own earlier studies of the patient, newest first.

        A PACS that cannot be asked leaves this node's own studies; without any, its error.
        """
        unreachable: PacsUnavailable | None = None
        try:
            found = {p.study_instance_uid: p for p in self._pacs.find(patient_id, before)}
        except PacsUnavailable as exc:
            log.warning("priors PACS not asked", extra={"reason": str(exc)})
            unreachable, found = exc, {}
        first = (before - dt.timedelta(days=self._settings.lookback_days)).strftime(DA_FORMAT)
        with self._sessions() as session:
            local = session.scalars(
                select(Study).where(
                    Study.patient_id == patient_id,
                    Study.study_date >= first,
                    Study.study_date < before.strftime(DA_FORMAT),
                )
            ).all()
            for study in local:
                found.setdefault(
                    study.study_instance_uid,
                    PriorStudy(
                        study.study_instance_uid,
                        study.study_date,
                        study.study_description or "",
                        in_pacs=False,
                    ),
                )
        found.pop(current_uid, None)
        if not found and unreachable is not None:
            raise unreachable
        ranked = sorted(found.values(), key=lambda p: p.study_date or "", reverse=True)
        return ranked[: self._settings.max_priors]

    def _analysed(self, prior: PriorStudy) -> tuple[int, bool, Findings]:
        """The prior's latest completed analysis (id, retrieved now, findings); made if none."""
        row = self._latest_completed(prior.study_instance_uid)
        if row is not None:
            return row[0], False, row[1]
        if not prior.in_pacs:
            raise PriorNotAnalysed("in this node but never analysed, and not in the PACS")
        self._spool.mkdir(parents=True, exist_ok=True)
        spool = Path(tempfile.mkdtemp(prefix="get-", dir=self._spool))  # one per retrieval
        try:
            moved = self._pacs.retrieve(prior.study_instance_uid, spool)
        finally:
            shutil.rmtree(spool, ignore_errors=True)  # C-GET's copies; the listener has its own
        log.info(
            "prior retrieved",
            extra={"study_uid": prior.study_instance_uid, "instances": moved},
        )
        event = self._event(prior.study_instance_uid)
        self._analyse(event)
        row = self._latest_completed(prior.study_instance_uid)
        if row is None:
            with self._sessions() as session:
                error = session.scalar(
                    select(AnalysisRow.error).where(
                        AnalysisRow.request_event_id == str(event.event_id)
                    )
                )
            raise PriorNotAnalysed(f"its analysis failed: {error or 'unknown error'}")
        return row[0], True, row[1]

    def _latest_completed(self, study_uid: str) -> tuple[int, Findings] | None:
        with self._sessions() as session:
            row = session.scalars(
                select(AnalysisRow)
                .where(
                    AnalysisRow.study_instance_uid == study_uid,
                    AnalysisRow.status == AnalysisStatus.COMPLETED,
                    AnalysisRow.findings.is_not(None),
                )
                .order_by(AnalysisRow.id.desc())
                .limit(1)
            ).first()
            if row is None or row.findings is None:
                return None
            return row.id, Findings.model_validate(row.findings)

    def _event(self, study_uid: str) -> StudyReceived:
        """The completion event the retrieved prior stands for, as the listener will send it."""
        with self._sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            if study is None:
                raise PriorNotAnalysed("retrieved, but the listener recorded no such study")
            receiving = study.status == StudyStatus.RECEIVING
            revision = study.revision + 1 if receiving else study.revision
            folder = self._root / study.path
            calling, called = list(study.calling_ae_titles), study.called_ae_title
            first, last = study.first_received_at, study.last_received_at
        summaries = (_series_summary(self._root, d) for d in sorted(folder.iterdir()))
        series = [s for s in summaries if s is not None]
        if not series:
            raise PriorNotAnalysed(f"retrieved, but no instances are in {folder}")
        return StudyReceived(
            event_id=prior_event_id(study_uid, max(revision, 1)),
            study_instance_uid=study_uid,
            revision=max(revision, 1),
            trigger=CompletionTrigger.QUIET_PERIOD,
            calling_ae_titles=calling,
            called_ae_title=called,
            first_received_at=first,
            last_received_at=last,
            instance_count=sum(s.instance_count for s in series),
            path=str(folder.relative_to(self._root)),
            series=series,
        )


def _series_summary(root: Path, folder: Path) -> SeriesSummary | None:
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.dcm"))
    if not files:
        return None
    try:
        header = dcmread(files[0], stop_before_pixels=True)
    except (InvalidDicomError, OSError):
        return None
    return SeriesSummary(
        series_instance_uid=folder.name,
        modality=str(header.get("Modality", "") or "OT"),
        sop_class_uids=[str(header.SOPClassUID)],
        instance_count=len(files),
        path=str(folder.relative_to(root)),
    )
