"""Synthetic cases written as a DICOM MR study, one series per contrast, as scanners name them."""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from models.synthetic.acquisition import AcquiredSeries, SeriesProtocol, acquire
from models.synthetic.case import MODALITIES, SyntheticCase

IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.10.1410.1")  # NeuroGate synthetic data writer

VENDORS: dict[str, dict[str, object]] = {
    "siemens": {
        "manufacturer": "SIEMENS",
        "model": "MAGNETOM Skyra",
        "names": {
            "t1": "t1_mprage_sag_p2_iso",
            "t1ce": "t1_mprage_tra_p2_iso_post",
            "t2": "t2_tse_tra_p2",
            "flair": "t2_tirm_tra_dark-fluid",
        },
    },
    "ge": {
        "manufacturer": "GE MEDICAL SYSTEMS",
        "model": "SIGNA Premier",
        "names": {
            "t1": "Sag 3D T1 BRAVO",
            "t1ce": "Ax 3D T1 BRAVO +C",
            "t2": "Ax T2 FSE",
            "flair": "Ax T2 FLAIR",
        },
    },
    "philips": {
        "manufacturer": "Philips Medical Systems",
        "model": "Ingenia",
        "names": {
            "t1": "T1W_3D_TFE",
            "t1ce": "T1W_3D_TFE_Gd",
            "t2": "T2W_TSE",
            "flair": "T2W_FLAIR",
        },
    },
}
# ScanningSequence, SequenceVariant, ScanOptions, TR (ms), TE (ms), TI (ms), flip angle
_SEQUENCE = {
    "t1": (["GR", "IR"], ["SK", "SP", "MP"], "IR", 2300.0, 2.3, 900.0, 8.0),
    "t1ce": (["GR", "IR"], ["SK", "SP", "MP"], "IR", 2300.0, 2.3, 900.0, 8.0),
    "t2": (["SE"], ["SK", "SP"], "", 5000.0, 95.0, None, 150.0),
    "flair": (["SE", "IR"], ["SK", "SP", "MP"], "IR", 9000.0, 85.0, 2500.0, 150.0),
}
_SERIES_NUMBERS = {"t1": 3, "t2": 4, "flair": 5, "t1ce": 8}


@dataclass(frozen=True)
class ScannerProfile:
    vendor: str
    field_strength: float
    protocols: dict[str, SeriesProtocol]

    def __post_init__(self) -> None:
        if self.vendor not in VENDORS:
            raise ValueError(f"vendor must be one of {sorted(VENDORS)}, got {self.vendor!r}")
        if set(self.protocols) - set(MODALITIES):
            raise ValueError(f"protocols may only name {MODALITIES}")


def random_profile(rng: np.random.Generator) -> ScannerProfile:
    """A plausible clinical brain-tumour protocol: 3D T1 pre/post, 2D T2 and FLAIR."""
    vendor = str(rng.choice(sorted(VENDORS)))
    noise = float(rng.uniform(0.015, 0.05))

    def two_d(modality: str) -> SeriesProtocol:
        return SeriesProtocol(
            modality,
            orientation="axial",
            tilt_deg=float(rng.uniform(-20, 20)) if rng.random() < 0.6 else 0.0,
            in_plane_mm=float(rng.choice([0.9, 1.0])),
            slice_mm=float(rng.choice([3.0, 4.0, 5.0, 6.0])),
            noise=noise,
            bias=float(rng.uniform(0.1, 0.4)),
            scale=float(rng.uniform(1200, 2800)),
        )

    def three_d(modality: str, orientation: str) -> SeriesProtocol:
        return SeriesProtocol(
            modality,
            orientation=orientation,
            in_plane_mm=1.0,
            slice_mm=1.0,
            three_d=True,
            noise=noise,
            bias=float(rng.uniform(0.1, 0.4)),
            scale=float(rng.uniform(1200, 2800)),
        )

    t1_plane = "sagittal" if vendor in ("siemens", "ge") else "axial"
    return ScannerProfile(
        vendor=vendor,
        field_strength=float(rng.choice([1.5, 3.0])),
        protocols={
            "t1": three_d("t1", t1_plane),
            "t1ce": three_d("t1ce", "axial"),
            "t2": two_d("t2"),
            "flair": two_d("flair"),
        },
    )


@dataclass(frozen=True, eq=False)
class WrittenSeries:
    modality: str
    series_instance_uid: str
    description: str
    files: list[Path]
    affine_lps: np.ndarray  # voxel (i, j, k) -> LPS mm
    shape: tuple[int, int, int]  # (slices, rows, columns)


@dataclass(frozen=True, eq=False)
class SyntheticStudy:
    study_instance_uid: str
    frame_of_reference_uid: str
    series: dict[str, WrittenSeries]  # by modality
    extra: list[WrittenSeries] = field(default_factory=list)  # localiser, diffusion

    @property
    def files(self) -> list[Path]:
        return [f for s in [*self.series.values(), *self.extra] for f in s.files]


def _base(
    case: SyntheticCase,
    profile: ScannerProfile,
    study_uid: str,
    frame_uid: str,
    patient_id: str,
    when: dt.datetime,
) -> Dataset:
    vendor = VENDORS[profile.vendor]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.PatientName = f"Synthetic^{case.case_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19650101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = f"SYN{case.seed:07d}"[:16]
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = "MR BRAIN W/WO CONTRAST"
    ds.Modality = "MR"
    ds.Manufacturer = vendor["manufacturer"]
    ds.ManufacturerModelName = vendor["model"]
    ds.InstitutionName = "NeuroGate synthetic data"
    ds.MagneticFieldStrength = profile.field_strength
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "BRAIN"
    return ds


def write_series(
    base: Dataset,
    acquired: AcquiredSeries,
    folder: Path,
    *,
    number: int,
    description: str,
    image_type: list[str],
    sequence_parameters: tuple[object, ...] | None = None,
    contrast_agent: str = "Gadobutrol",
) -> WrittenSeries:
    """One acquired series as single-frame MR files under ``folder``, on top of ``base`` (the
    patient, study and equipment attributes every series of the study shares).

    ``sequence_parameters``: ScanningSequence, SequenceVariant, ScanOptions, TR, TE, TI (or
    None) and flip angle; by default this generator's for the series' contrast.
    """
    protocol = acquired.protocol
    parameters = sequence_parameters or _SEQUENCE[protocol.modality]
    sequence, variant, options, tr, te, ti, flip = parameters
    series_uid = generate_uid()
    series_dir = folder / f"{number:03d}_{description.replace(' ', '_').replace('+', 'plus')}"
    series_dir.mkdir(parents=True, exist_ok=True)
    row, column, normal = (
        acquired.direction[:, 0],
        acquired.direction[:, 1],
        acquired.direction[:, 2],
    )
    low, high = np.percentile(acquired.pixels, [1, 99.5])
    files = []
    for k in range(acquired.pixels.shape[0]):
        ds = copy.deepcopy(base)  # Dataset.copy() is shallow: it would share elements
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SeriesDescription = ds.ProtocolName = description
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ImageType = image_type
        ds.ScanningSequence, ds.SequenceVariant = sequence, variant
        ds.ScanOptions = options
        ds.MRAcquisitionType = "3D" if protocol.three_d else "2D"
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = tr, te, flip
        if ti is not None:
            ds.InversionTime = ti
        ds.EchoTrainLength = 1 if protocol.three_d else 16
        if protocol.modality == "t1ce":
            ds.ContrastBolusAgent = contrast_agent
        position = acquired.origin + k * acquired.spacing[2] * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row, *column)]
        ds.PixelSpacing = [float(acquired.spacing[1]), float(acquired.spacing[0])]
        ds.SliceThickness = float(acquired.spacing[2])
        ds.SpacingBetweenSlices = float(acquired.spacing[2])
        ds.SliceLocation = round(float(np.dot(position, normal)), 4)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = acquired.pixels.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = round(float(low + high) / 2)
        ds.WindowWidth = max(round(float(high - low)), 1)
        ds.PixelData = acquired.pixels[k].tobytes()
        path = series_dir / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return WrittenSeries(
        protocol.modality,
        series_uid,
        description,
        files,
        acquired.affine_lps,
        acquired.pixels.shape,
    )


def write_dicom_study(
    case: SyntheticCase,
    folder: Path,
    *,
    seed: int,
    profile: ScannerProfile | None = None,
    modalities: tuple[str, ...] = MODALITIES,
    extra_series: bool = False,
    patient_id: str | None = None,
) -> SyntheticStudy:
    """Acquire and write ``case`` as a DICOM study under ``folder`` (a sub-folder per series).

    Parameters
    ----------
    seed
        Drives the scanner: protocol choice (when ``profile`` is None), bias and noise.
    modalities
        Which contrasts to write; a subset makes studies with missing series.
    extra_series
        Also write what real studies carry besides: a 3-plane localiser and a diffusion trace.
    """
    rng = np.random.default_rng(seed)
    profile = profile or random_profile(rng)
    study_uid, frame_uid = generate_uid(), generate_uid()
    when = dt.datetime(2026, 1, 1, 8, 0) + dt.timedelta(minutes=int(rng.integers(0, 500_000)))
    base = _base(case, profile, study_uid, frame_uid, patient_id or case.case_id, when)
    names = VENDORS[profile.vendor]["names"]
    assert isinstance(names, dict)
    written = {}
    for modality in modalities:
        acquired = acquire(case, profile.protocols[modality], rng)
        written[modality] = write_series(
            base,
            acquired,
            folder,
            number=_SERIES_NUMBERS[modality],
            description=names[modality],
            image_type=["ORIGINAL", "PRIMARY", "M", "ND"],
        )
    extra = []
    if extra_series:
        localiser = replace(
            profile.protocols["t2"],
            orientation="sagittal",
            tilt_deg=0.0,
            in_plane_mm=1.9,
            slice_mm=10.0,
            three_d=False,
        )
        extra.append(
            write_series(
                base,
                acquire(case, localiser, rng),
                folder,
                number=1,
                description="localizer",
                image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
            )
        )
        diffusion = replace(profile.protocols["t2"], in_plane_mm=1.9, tilt_deg=0.0)
        extra.append(
            write_series(
                base,
                acquire(case, diffusion, rng),
                folder,
                number=6,
                description="ep2d_diff_3scan_trace_p2",
                image_type=["DERIVED", "PRIMARY", "DIFFUSION", "TRACE"],
            )
        )
    return SyntheticStudy(study_uid, frame_uid, written, extra)
