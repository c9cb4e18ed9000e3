"""Session-wide inputs that take seconds to make and that tests only read.

The shipped models, loaded once (each load takes seconds, TensorFlow's first far longer), and
the synthetic four-series glioma study that the worker, hostile-worker, routing, webhook and
browser tests push or put in storage (about 12 s to generate and write). No test changes
either: a test that needs a variant of the study copies what it changes into its own folder.
"""

from __future__ import annotations

import pytest

from inference_worker.pipeline import Models
from models.registry import Task, manifest_for
from models.synthetic import generate_case
from models.synthetic.acquisition import SeriesProtocol
from models.synthetic.dicom import ScannerProfile, SyntheticStudy, write_dicom_study

# A small clinical-looking protocol: 2 mm voxels, a tilted T2.
PROFILE = ScannerProfile(
    vendor="siemens",
    field_strength=3.0,
    protocols={
        "t1": SeriesProtocol("t1", "sagittal", in_plane_mm=2.0, slice_mm=2.0, three_d=True),
        "t1ce": SeriesProtocol("t1ce", "axial", in_plane_mm=2.0, slice_mm=2.0, three_d=True),
        "t2": SeriesProtocol("t2", "axial", tilt_deg=10.0, in_plane_mm=2.0, slice_mm=5.0),
        "flair": SeriesProtocol("flair", "axial", in_plane_mm=2.0, slice_mm=4.0),
    },
)
GLIOMA_PATIENT = "NG-TEST-1"


@pytest.fixture(scope="session")
def models() -> Models:
    """The shipped models, as a worker loads them."""
    return Models.load_all({task: manifest_for(task) for task in Task})


@pytest.fixture(scope="session")
def glioma(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    """A held-out glioma study (seed 810001) of patient NG-TEST-1, as a scanner writes it."""
    case = generate_case(810001, "glioma", voxel_mm=2.0)
    folder = tmp_path_factory.mktemp("glioma")
    return write_dicom_study(case, folder, seed=5, profile=PROFILE, patient_id=GLIOMA_PATIENT)
