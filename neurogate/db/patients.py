"""Patients from DICOM headers: the first study seen for a Patient ID makes the patient record.

A study pushed by a scanner names its patient only in its headers; without a ``patients`` row
the portal could not show that patient, compare follow-ups or link a patient account. The
listener calls :func:`record_patient` in the transaction that records a new study.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neurogate.db.models import Patient

log = logging.getLogger(__name__)

_DICOM_SEXES = {"M", "F", "O"}


def _birth_date(value: str | None) -> dt.date | None:
    """A DICOM DA (``YYYYMMDD``) as a date; ``None`` when absent or not a real date."""
    if not value:
        return None
    try:
        return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def record_patient(
    session: Session,
    *,
    patient_id: str | None,
    name: str | None,
    birth_date: str | None,
    sex: str | None,
) -> Patient | None:
    """Create the patient ``patient_id`` from a study's headers, or fill in what its record
    lacks (values already there, e.g. typed in the portal, are kept); ``None`` without an ID.

    Runs in the caller's transaction; a concurrent creation of the same patient (the API) is
    taken as the record.
    """
    if not patient_id:
        return None
    born = _birth_date(birth_date)
    sex = sex.strip().upper() if sex and sex.strip().upper() in _DICOM_SEXES else None
    patient = session.scalar(select(Patient).where(Patient.patient_id == patient_id))
    if patient is None:
        patient = Patient(
            patient_id=patient_id,
            name=name,
            birth_date=born,
            sex=sex,
            created_at=dt.datetime.now(dt.UTC),
        )
        try:
            with session.begin_nested():
                session.add(patient)
        except IntegrityError:
            patient = session.scalar(select(Patient).where(Patient.patient_id == patient_id))
            if patient is None:
                raise
        else:
            log.info("patient recorded from DICOM headers", extra={"patient_id": patient_id})
            return patient
    for attribute, value in (("name", name), ("birth_date", born), ("sex", sex)):
        if value is not None and getattr(patient, attribute) is None:
            setattr(patient, attribute, value)
    return patient
