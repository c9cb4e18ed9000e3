"""Modality Performed Procedure Step SCP: the explicit "study complete" signal.

A modality N-CREATEs a step IN PROGRESS when it starts and N-SETs it COMPLETED (listing the
series and instances it produced) when it ends. The listener completes the study as soon as
every listed instance has arrived; the quiet timer remains the fallback.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_listener.assembly import MPPS_COMPLETED, InstanceRecorder, InstanceRef
from dicom_listener.status import Status
from neurogate.db.models import PerformedProcedureStep
from schemas.uids import validate_uid

log = logging.getLogger(__name__)

IN_PROGRESS = "IN PROGRESS"
DISCONTINUED = "DISCONTINUED"
_STATUSES = {IN_PROGRESS, MPPS_COMPLETED, DISCONTINUED}
# PS3.4 F.7.2.2: a step that is COMPLETED or DISCONTINUED may no longer be updated.
MAY_NO_LONGER_BE_UPDATED = 0xA710

Reply = tuple[int, Dataset | None]


def _referenced(ds: Dataset) -> list[InstanceRef]:
    refs: list[InstanceRef] = []
    for series in ds.get("PerformedSeriesSequence", []):
        series_uid = validate_uid(str(series.SeriesInstanceUID))
        for image in series.get("ReferencedImageSequence", []):
            refs.append((series_uid, validate_uid(str(image.ReferencedSOPInstanceUID))))
    return refs


def _study_uid(ds: Dataset) -> str | None:
    for item in ds.get("ScheduledStepAttributesSequence", []):
        if item.get("StudyInstanceUID"):
            return validate_uid(str(item.StudyInstanceUID))
    return None


class ProcedureStepSCP:
    """N-CREATE and N-SET handlers for MPPS, bound at start-up."""

    def __init__(self, sessions: sessionmaker[Session], tracker: InstanceRecorder) -> None:
        self._sessions = sessions
        self._tracker = tracker

    def on_n_create(self, event: Event) -> Reply:
        uid = cast(N_CREATE, event.request).AffectedSOPInstanceUID
        calling = event.assoc.requestor.ae_title
        ids = {"mpps": uid, "calling_ae": calling}
        if not uid:
            log.warning("MPPS N-CREATE without an SOP Instance UID", extra=ids)
            return Status.MISSING_ATTRIBUTE, None
        try:
            ds = event.attribute_list
            status = str(ds.get("PerformedProcedureStepStatus", ""))
            if status != IN_PROGRESS:
                log.warning("MPPS N-CREATE must be IN PROGRESS", extra={**ids, "status": status})
                return Status.INVALID_ATTRIBUTE_VALUE, None
            study_uid, refs = _study_uid(ds), _referenced(ds)
        except (ValueError, AttributeError, KeyError) as exc:
            log.warning("unreadable MPPS N-CREATE", extra={**ids, "error": str(exc)})
            return Status.INVALID_ATTRIBUTE_VALUE, None
        now = dt.datetime.now(dt.UTC)
        try:
            with self._sessions.begin() as session:
                if session.get(PerformedProcedureStep, str(uid)) is not None:
                    return Status.DUPLICATE_SOP_INSTANCE, None
                session.add(
                    PerformedProcedureStep(
                        sop_instance_uid=str(uid),
                        study_instance_uid=study_uid,
                        status=status,
                        calling_ae_title=calling,
                        referenced_instances=[list(r) for r in refs],
                        created_at=now,
                        updated_at=now,
                    )
                )
        except SQLAlchemyError:
            log.exception("could not record MPPS N-CREATE", extra=ids)
            return Status.PROCESSING_FAILURE, None
        log.info("MPPS step created", extra={**ids, "study": study_uid})
        return Status.SUCCESS, ds

    def on_n_set(self, event: Event) -> Reply:
        uid = str(cast(N_SET, event.request).RequestedSOPInstanceUID)
        ids = {"mpps": uid, "calling_ae": event.assoc.requestor.ae_title}
        try:
            mods = event.modification_list
            new_status = mods.get("PerformedProcedureStepStatus")
            refs = _referenced(mods) if "PerformedSeriesSequence" in mods else None
        except (ValueError, AttributeError, KeyError) as exc:
            log.warning("unreadable MPPS N-SET", extra={**ids, "error": str(exc)})
            return Status.INVALID_ATTRIBUTE_VALUE, None
        if new_status is not None and str(new_status) not in _STATUSES:
            return Status.INVALID_ATTRIBUTE_VALUE, None
        try:
            with self._sessions.begin() as session:
                step = session.get(PerformedProcedureStep, uid)
                if step is None:
                    return Status.NO_SUCH_OBJECT_INSTANCE, None
                if step.status != IN_PROGRESS:
                    return MAY_NO_LONGER_BE_UPDATED, None
                if refs is not None:
                    step.referenced_instances = [list(r) for r in refs]
                if new_status is not None:
                    step.status = str(new_status)
                step.updated_at = dt.datetime.now(dt.UTC)
                completed = step.status == MPPS_COMPLETED
                study_uid = step.study_instance_uid
                awaited = [(s, i) for s, i in step.referenced_instances]
        except SQLAlchemyError:
            log.exception("could not record MPPS N-SET", extra=ids)
            return Status.PROCESSING_FAILURE, None
        log.info("MPPS step updated", extra={**ids, "status": str(new_status), "study": study_uid})
        if completed and study_uid:
            self._tracker.procedure_step_completed(study_uid, awaited)
        return Status.SUCCESS, mods
