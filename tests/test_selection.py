"""Series selection on the header variations real studies have."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread

from inference_worker.selection import (
    Role,
    SeriesInfo,
    SeriesRules,
    load_rules,
    orientation_of,
    select_series,
)
from tests.dicomgen import write_mr_study

AXIAL = "axial"
ORIGINAL = ("ORIGINAL", "PRIMARY", "M", "ND")
DERIVED = ("DERIVED", "SECONDARY", "MPR")


def mr(uid: str, description: str, **kw: object) -> SeriesInfo:
    fields: dict[str, object] = {
        "modality": "MR",
        "image_type": ORIGINAL,
        "orientation": AXIAL,
        "slices": 24,
        **kw,
    }
    return SeriesInfo(series_instance_uid=uid, description=description, **fields)  # type: ignore[arg-type]


def chosen(selection) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {role.value: c.series_instance_uid for role, c in selection.chosen.items()}


SIEMENS = [
    mr("1", "localizer", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), slices=3),
    mr("2", "t1_mprage_sag_p2_iso", acquisition_type="3D", orientation="sagittal", slices=176),
    mr("3", "t2_tse_tra_p2", slices=25),
    mr("4", "t2_tirm_tra_dark-fluid", inversion_time_ms=2500.0, slices=25),
    mr("5", "ep2d_diff_3scan_trace_p2", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "TRACE")),
    mr("6", "ep2d_diff_3scan_trace_p2_ADC", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
    mr(
        "7",
        "t1_mprage_sag_p2_iso",
        contrast_agent="Gadovist",
        acquisition_type="3D",
        orientation="sagittal",
        slices=176,
    ),
    mr(
        "8",
        "t1_mprage_sag_p2_iso_MPR_tra",
        contrast_agent="Gadovist",
        image_type=DERIVED,
        slices=120,
    ),
]
GE = [
    mr("1", "3-Plane Loc", slices=9),
    mr("2", "Ax T1 FLAIR", inversion_time_ms=750.0),
    mr("3", "Ax T2 FSE"),
    mr("4", "Ax T2 FLAIR", inversion_time_ms=2400.0),
    mr("5", "Ax DWI Asset"),
    mr("6", "Ax T1 FLAIR +C", inversion_time_ms=750.0),
    mr("7", "Sag 3D T1 BRAVO +C", acquisition_type="3D", orientation="sagittal", slices=160),
    mr("8", "Ax T2* GRE"),
]
PHILIPS = [
    mr("1", "Survey", slices=15),
    mr("2", "T1W_3D_TFE", acquisition_type="3D", slices=180),
    mr("3", "T2W_TSE"),
    mr("4", "T2W_FLAIR", inversion_time_ms=2800.0),
    mr("5", "T1W_3D_TFE_Gd", acquisition_type="3D", slices=180),
    mr("6", "DWI_b1000", image_type=("ORIGINAL", "PRIMARY", "M_SE", "DIFFUSION")),
]


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        (SIEMENS, {"T1": "2", "T1CE": "7", "T2": "3", "FLAIR": "4"}),
        (GE, {"T1": "2", "T1CE": "7", "T2": "3", "FLAIR": "4"}),
        (PHILIPS, {"T1": "2", "T1CE": "5", "T2": "3", "FLAIR": "4"}),
    ],
    ids=["siemens", "ge", "philips"],
)
def test_vendor_studies(study: list[SeriesInfo], expected: dict[str, str]) -> None:
    selection = select_series(study)
    assert chosen(selection) == expected
    assert selection.missing == ()


def test_reasons_and_rejections_are_recorded() -> None:
    selection = select_series(SIEMENS)
    flair = selection.chosen[Role.FLAIR]
    assert any("dark-fluid" in r or "tirm" in r for r in flair.reasons)
    assert "post-contrast" in selection.chosen[Role.T1CE].reasons
    assert "localizer" in selection.rejected["1"]
    assert selection.rejected["5"] == "excluded by its description ('ep2d diff')"
    assert "mpr" in selection.rejected["8"].lower()
    as_json = selection.to_dict()
    assert as_json["chosen"]["T1"]["series_instance_uid"] == "2"
    assert as_json["missing"] == []


def test_only_flair_reports_the_missing_roles() -> None:
    selection = select_series([mr("9", "AX FLAIR", inversion_time_ms=2200.0)])
    assert chosen(selection) == {"FLAIR": "9"}
    assert selection.missing == (Role.T1, Role.T1CE, Role.T2)


def test_unnamed_flair_is_found_by_its_inversion_time() -> None:
    selection = select_series([mr("9", "Series 5", inversion_time_ms=2200.0)])
    assert chosen(selection) == {"FLAIR": "9"}
    assert selection.chosen[Role.FLAIR].reasons[0] == "inversion time 2200 ms"


def test_non_mr_and_too_short_series_are_never_chosen() -> None:
    ct = replace(SIEMENS[1], series_instance_uid="ct", modality="CT")
    short = mr("short", "t2_tse_tra", slices=4)
    selection = select_series([ct, short])
    assert selection.chosen == {}
    assert selection.rejected == {
        "ct": "modality CT, not MR",
        "short": "4 slices, fewer than 10",
    }


def test_original_3d_wins_over_a_2d_duplicate() -> None:
    selection = select_series(
        [mr("2d", "Ax T1 SE"), mr("3d", "Sag T1 MPRAGE", acquisition_type="3D", slices=176)]
    )
    assert chosen(selection) == {"T1": "3d"}


def test_series_info_from_a_real_header(tmp_path: Path) -> None:
    study = write_mr_study(tmp_path, series=4, slices=1)
    infos = [
        SeriesInfo.from_dataset(dcmread(study.series_files(uid)[0]), slices=30)
        for uid in study.series_uids
    ]
    assert [i.orientation for i in infos] == ["axial"] * 4
    assert infos[0].image_type == ("ORIGINAL", "PRIMARY", "M", "NONE")
    selection = select_series(infos)
    # The generated study names its series t1_mprage_sag, t1_mprage_post_gd, t2_tse_tra and
    # t2_tirm_tra_dark-fluid.
    assert chosen(selection) == dict(
        zip(["T1", "T1CE", "T2", "FLAIR"], study.series_uids, strict=True)
    )


def test_orientation_of() -> None:
    assert orientation_of([1, 0, 0, 0, 1, 0]) == "axial"
    assert orientation_of([0, 1, 0, 0, 0, -1]) == "sagittal"
    assert orientation_of([1, 0, 0, 0, 0, -1]) == "coronal"
    assert orientation_of([1, 0, 0, 0, 0.7071, -0.7071]) == "oblique"
    assert orientation_of(None) == "unknown"


def test_rules_file_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="invalid series rules"):
        SeriesRules.from_toml({"exclude": {}})
    rules = load_rules()
    assert {r.role for r in rules.roles} == set(Role)
