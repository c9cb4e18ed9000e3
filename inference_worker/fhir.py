"""An analysis as a FHIR R4 transaction Bundle: one DiagnosticReport and its Observations.

What an EHR integration engine can post to a FHIR server as it is: the report (LOINC 24590-2,
"MR Brain", radiology) with an Observation each for the detection (SNOMED 108369006 Neoplasm:
Present/Absent, with the detector's probability), the tumour class (NCIt, as in the SR), the
WT/TC/ET volumes and the intracranial volume (SNOMED 118565006 Volume, UCUM mL), each coded as
the SR codes it. The DICOM objects are referred to by UID (``urn:dicom:uid``): the study as the
report's ``imagingStudy``, the SR and SEG as its identifiers. Entries are conditional creates
(``ifNoneExist`` on the report's identifier), so a redelivered notification files once.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from schemas.findings import Findings

DICOM_UID = "urn:dicom:uid"  # identifiers of DICOM objects: value "urn:oid:<UID>"
URI = "urn:ietf:rfc:3986"
CODE_SYSTEMS = {  # DICOM coding scheme designator -> FHIR code system
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "NCIt": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
    "UCUM": "http://unitsofmeasure.org",
    "99NEUROGATE": "urn:neurogate:codes",
}
EVENT_TAG_SYSTEM = "urn:neurogate:event"
MR_BRAIN = codes.LN.BrainMRI  # LOINC 24590-2, the SR's procedure code
NEOPLASM = codes.SCT.Neoplasm  # SNOMED 108369006
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent  # SNOMED 52101004, 272519000
PROBABILITY = codes.DCM.Probability  # DCM 122157
VOLUME = codes.SCT.Volume  # SNOMED 118565006
INTRACRANIAL_STRUCTURE = codes.SCT.IntracranialStructure  # SNOMED 128319008
SUM_OF_VOXELS = codes.DCM.SumOfSegmentedVoxelMethodForVolume  # DCM 126030
RADIOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}
IMAGING = {
    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
    "code": "imaging",
}
ACCESSION = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
TUMOUR_CLASS_TEXT = "Tumour class"
_NAMESPACE = uuid.UUID("5b0f3a52-6f0e-4c1e-9d43-4e6575726f47")  # fullUrls, stable per analysis


def coding(code: Code) -> dict[str, str]:
    return {
        "system": CODE_SYSTEMS.get(code.scheme_designator, f"urn:dicom:{code.scheme_designator}"),
        "code": code.value,
        "display": code.meaning,
    }


def _concept(code: Code, text: str | None = None) -> dict[str, Any]:
    return {"coding": [coding(code)], "text": text or code.meaning}


def dicom_uid(uid: str) -> dict[str, str]:
    return {"system": DICOM_UID, "value": f"urn:oid:{uid}"}


def _millilitres(value: float) -> dict[str, Any]:
    unit = CODE_SYSTEMS["UCUM"]
    return {"value": round(float(value), 2), "unit": "mL", "system": unit, "code": "mL"}


def _instant(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds")


def _effective(study_date: str | None, study_time: str | None) -> str | None:
    """DICOM DA (and TM) as a FHIR dateTime; without a time, the date alone."""
    if not study_date or len(study_date) != 8 or not study_date.isdigit():
        return None
    day = f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}"
    digits = (study_time or "").split(".")[0]
    if len(digits) >= 4 and digits.isdigit():
        seconds = digits[4:6] or "00"
        return f"{day}T{digits[:2]}:{digits[2:4]}:{seconds}Z"  # scanner time taken as UTC
    return day


def report_bundle(
    *,
    request_event_id: str,
    study_instance_uid: str,
    status: str,
    findings: Findings | None,
    objects: Sequence[tuple[str, str]],
    issued: dt.datetime,
    event: str,
    patient_id: str | None = None,
    accession_number: str | None = None,
    study_date: str | None = None,
    study_time: str | None = None,
    failure: str | None = None,
) -> dict[str, Any]:
    """The transaction Bundle of one analysis.

    Parameters
    ----------
    request_event_id
        The analysis's request event (a UUID): the report's own identifier.
    status
        The analysis's state: ``completed`` gives a ``final`` report with Observations,
        ``failed`` a ``cancelled`` one whose conclusion is ``failure``.
    objects
        ``(kind, SOP Instance UID)`` of the result objects (``sr``, ``seg``, ...).
    event
        What the notification is about (``analysis.completed`` ...), as the Bundle's tag.
    """
    report_id = {"system": URI, "value": f"urn:uuid:{request_event_id}"}
    identifiers: list[dict[str, Any]] = [report_id]
    for kind, uid in objects:
        if kind in ("sr", "seg"):
            identifiers.append({**dicom_uid(uid), "type": {"text": f"DICOM {kind.upper()}"}})
    observations = _observations(findings) if findings is not None else []
    entries = []
    for observation in observations:
        entries.append(
            {
                "fullUrl": _full_url(request_event_id, observation["code"]["text"]),
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [{"coding": [IMAGING]}],
                    **_subject(patient_id),
                    **_when(study_date, study_time),
                    "issued": _instant(issued),
                    **observation,
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": identifiers,
        "status": "final" if status == "completed" else "cancelled",
        "category": [{"coding": [RADIOLOGY]}],
        "code": _concept(MR_BRAIN, "MR Brain: NeuroGate tumour analysis"),
        **_subject(patient_id),
        **_when(study_date, study_time),
        "issued": _instant(issued),
        "performer": [{"display": "NeuroGate (AI; not for clinical use without review)"}],
        "result": [{"reference": e["fullUrl"]} for e in entries],
        "imagingStudy": [
            {"type": "ImagingStudy", "identifier": dicom_uid(study_instance_uid)},
        ],
        "conclusion": failure if findings is None else _conclusion(findings),
    }
    if accession_number:
        report["identifier"].append(
            {"type": {"coding": [ACCESSION], "text": "Accession Number"}, "value": accession_number}
        )
    if findings is not None and (code := _class_code(findings)) is not None:
        report["conclusionCode"] = [_concept(code)]
    if not report["result"]:
        del report["result"]
    entries.insert(
        0,
        {
            "fullUrl": _full_url(request_event_id, "DiagnosticReport"),
            "resource": report,
            "request": {
                "method": "POST",
                "url": "DiagnosticReport",
                "ifNoneExist": f"identifier={URI}|urn:uuid:{request_event_id}",
            },
        },
    )
    return {
        "resourceType": "Bundle",
        "meta": {"tag": [{"system": EVENT_TAG_SYSTEM, "code": event}]},
        "type": "transaction",
        "timestamp": _instant(issued),
        "entry": entries,
    }


def _full_url(request_event_id: str, name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{request_event_id}/{name}')}"


def _subject(patient_id: str | None) -> dict[str, Any]:
    if not patient_id:
        return {}
    return {"subject": {"type": "Patient", "identifier": {"value": patient_id}}}


def _when(study_date: str | None, study_time: str | None) -> dict[str, Any]:
    effective = _effective(study_date, study_time)
    return {"effectiveDateTime": effective} if effective else {}


def _tumour(findings: Findings) -> bool:
    from inference_worker.results.common import tumour_found

    return tumour_found(findings)


def _class_code(findings: Findings) -> Code | None:
    from inference_worker.results.sr import class_code

    if findings.detection is not None and not findings.detection.tumour:
        return ABSENT
    if _tumour(findings) and findings.classification is not None:
        return class_code(findings.classification.label)
    return None


def _observations(findings: Findings) -> list[dict[str, Any]]:
    """Detection, class, WT/TC/ET and intracranial volumes, as the SR reports them."""
    from inference_worker.results.seg import SEGMENTS

    derived = [{"type": "ImagingStudy", "identifier": dicom_uid(findings.study_instance_uid)}]
    observations: list[dict[str, Any]] = []
    detection = findings.detection
    if detection is not None:
        observations.append(
            {
                "code": _concept(NEOPLASM, "Neoplasm"),
                "valueCodeableConcept": _concept(PRESENT if detection.tumour else ABSENT),
                "component": [
                    {
                        "code": _concept(PROBABILITY),
                        "valueQuantity": {
                            "value": round(detection.probability, 4),
                            "unit": "1",
                            "system": CODE_SYSTEMS["UCUM"],
                            "code": "1",
                        },
                    }
                ],
                "derivedFrom": derived,
            }
        )
    classification = findings.classification
    code = _class_code(findings)
    if _tumour(findings) and classification is not None and code is not None:
        observations.append(
            {
                "code": {"text": TUMOUR_CLASS_TEXT},
                "valueCodeableConcept": _concept(code, classification.label),
                "component": [
                    {
                        "code": {"text": f"Probability of {label}"},
                        "valueQuantity": {"value": round(p, 4), "unit": "1"},
                    }
                    for label, p in sorted(classification.probabilities.items())
                ],
                "derivedFrom": derived,
            }
        )
    if _tumour(findings) and findings.segmentation is not None:
        volumes = findings.segmentation.volumes_ml
        for region in SEGMENTS:
            if region.key not in volumes:
                continue
            text = f"{region.label} ({region.key}) volume"
            observations.append(
                {
                    "code": {
                        "coding": [coding(VOLUME), coding(region.property_type)],
                        "text": text,
                    },
                    "valueQuantity": _millilitres(volumes[region.key]),
                    "method": _concept(SUM_OF_VOXELS),
                    "derivedFrom": derived,
                }
            )
    if findings.brain is not None:
        observations.append(
            {
                "code": {"coding": [coding(VOLUME)], "text": "Intracranial volume"},
                "bodySite": _concept(INTRACRANIAL_STRUCTURE),
                "valueQuantity": _millilitres(findings.brain.volume_ml),
                "method": _concept(SUM_OF_VOXELS),
                "derivedFrom": derived,
            }
        )
    return observations


def _conclusion(findings: Findings) -> str:
    from inference_worker.results.common import decision_basis

    if findings.detection is None:
        return "No detection was made: " + (", ".join(findings.skipped.values()) or "see SR")
    if not findings.detection.tumour:
        return f"No tumour found. {decision_basis(findings)}"
    parts = ["Tumour found"]
    if findings.classification is not None:
        parts.append(f"class {findings.classification.label}")
    if findings.segmentation is not None:
        volumes = ", ".join(f"{k} {v:.1f} mL" for k, v in findings.segmentation.volumes_ml.items())
        parts.append(f"volumes {volumes}")
    return "; ".join(parts) + "."
