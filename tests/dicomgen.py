"""Small, valid MR studies written by our own code, for tests that need many instances."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

SERIES_DESCRIPTIONS = ("t1_mprage_sag", "t1_mprage_post_gd", "t2_tse_tra", "t2_tirm_tra_dark-fluid")


@dataclass(frozen=True)
class GeneratedStudy:
    study_uid: str
    series_uids: list[str]
    files: list[Path]

    def series_files(self, series_uid: str) -> list[Path]:
        return [f for f in self.files if f.parent.name == series_uid]


def write_mr_study(
    folder: Path,
    *,
    series: int = 3,
    slices: int = 6,
    size: int = 32,
    patient_id: str = "NG-TEST-1",
    seed: int = 0,
) -> GeneratedStudy:
    """Write a study of ``series`` axial MR series of ``slices`` slices each, explicit VR LE.

    Files go to ``folder/<SeriesInstanceUID>/<n>.dcm``.
    """
    rng = np.random.default_rng(seed)
    study_uid, frame_uid = generate_uid(), generate_uid()
    series_uids: list[str] = []
    files: list[Path] = []
    now = dt.datetime(2026, 11, 1, 9, 30)
    for s_index in range(series):
        series_uid = generate_uid()
        series_uids.append(series_uid)
        description = SERIES_DESCRIPTIONS[s_index % len(SERIES_DESCRIPTIONS)]
        (folder / series_uid).mkdir(parents=True)
        for i in range(slices):
            ds = _slice(study_uid, frame_uid, series_uid, s_index + 1, description, i, size, rng)
            ds.PatientID = patient_id
            ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
            path = folder / series_uid / f"{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return GeneratedStudy(study_uid, series_uids, files)


def _slice(
    study_uid: str,
    frame_of_reference_uid: str,
    series_uid: str,
    series_number: int,
    description: str,
    index: int,
    size: int,
    rng: np.random.Generator,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.PatientPosition = "HFS"
    ds.Laterality = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.RepetitionTime = 2000.0
    ds.EchoTime = 10.0
    ds.EchoTrainLength = 1
    ds.Modality = "MR"
    ds.PatientName = "Test^Generated"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = "ACC0001"
    ds.StudyDescription = "MR BRAIN W/WO CONTRAST"
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    ds.InstanceNumber = index + 1
    ds.Manufacturer = "NeuroGate test generator"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = 5.0
    ds.PixelSpacing = [1.0, 1.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, 5.0 * index]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    return ds
