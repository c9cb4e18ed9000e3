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


def write_series(
    folder: Path,
    array: np.ndarray,
    *,
    origin: np.ndarray,
    spacing: np.ndarray,
    direction: np.ndarray,
    enhanced: bool = False,
    description: str = "t1_mprage_obl",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> list[Path]:
    """Write ``array[k, j, i]`` as an MR series with the given LPS geometry.

    Single-frame MR Image Storage (one file per slice, written in shuffled order) or one
    Enhanced MR Image Storage instance with per-frame positions.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    series_uid = generate_uid()
    row, column, k_axis = direction[:, 0], direction[:, 1], direction[:, 2]
    positions = [origin + k * spacing[2] * k_axis for k in range(array.shape[0])]
    iop = [float(v) for v in (*row, *column)]
    pixel_spacing = [float(spacing[1]), float(spacing[0])]
    pixels = array.astype(np.uint16)
    if enhanced:
        return [_enhanced(folder, pixels, positions, iop, pixel_spacing, float(spacing[2]),
                          study_uid, frame_uid, series_uid, description)]  # fmt: skip
    rng = np.random.default_rng(len(positions))
    paths = []
    for k in rng.permutation(len(positions)):
        ds = _slice(study_uid, frame_uid, series_uid, 1, description, int(k), array.shape[1],
                    np.random.default_rng(0))  # fmt: skip
        ds.Rows, ds.Columns = pixels.shape[1:]
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = float(spacing[2])
        ds.PixelData = pixels[k].tobytes()
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _enhanced(
    folder: Path,
    pixels: np.ndarray,
    positions: list[np.ndarray],
    iop: list[float],
    pixel_spacing: list[float],
    thickness: float,
    study_uid: str,
    frame_uid: str,
    series_uid: str,
    description: str,
) -> Path:
    from pydicom.uid import EnhancedMRImageStorage

    ds = _slice(study_uid, frame_uid, series_uid, 1, description, 0, pixels.shape[1],
                np.random.default_rng(0))  # fmt: skip
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
                    "SliceThickness", "InstanceNumber"):  # fmt: skip
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.NumberOfFrames = len(positions)
    ds.Rows, ds.Columns = pixels.shape[1:]
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = iop
    measures.PixelSpacing = pixel_spacing
    measures.SliceThickness = thickness
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for position in positions:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [float(v) for v in position]
        item.PlanePositionSequence = [plane]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = pixels.tobytes()
    path = folder / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
