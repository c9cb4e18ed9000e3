"""The byte-level walk agrees with pydicom on every test file, and never accepts a damaged one."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import DATA_ROOT, external_data_sources
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_listener import part10
from dicom_listener.instances import InvalidInstance, _pydicom_header, _walked_header

PROPERTIES = (
    "sop_class_uid",
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
    "series_number",
    "modality",
    "series_description",
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "accession_number",
    "study_date",
    "study_time",
    "study_description",
)


def _testdata() -> list[Path]:
    """pydicom's test files and pydicom-data's, from disk (``get_testdata_files`` would try the
    network for the files that pydicom-data does not hold)."""
    folders = [Path(DATA_ROOT) / "test_files"]
    folders += [source.data_path for source in external_data_sources().values()]
    return sorted(path for folder in folders for path in folder.glob("*.dcm"))


def _verdict(read, path: Path) -> tuple[object, ...] | str:  # type: ignore[no-untyped-def]
    try:
        header = read(path)
    except InvalidInstance as exc:
        return f"refused {exc.status:04X}"
    return tuple(getattr(header, name) for name in PROPERTIES)


def test_walk_and_pydicom_agree_on_every_pydicom_test_file() -> None:
    """Identical headers where the walk decides; the walk hands over what it does not cover."""
    walked = 0
    handed_over = []
    for path in _testdata():
        try:
            mine = _verdict(_walked_header, path)
        except part10.NotWalkable:
            handed_over.append(path.name)
            continue
        walked += 1
        assert mine == _verdict(_pydicom_header, path), path.name
    # Big endian, deflated, preamble-less and damaged files are pydicom's to judge.
    assert walked >= 100
    assert {"ExplVR_BigEnd.dcm", "image_dfl.dcm", "no_meta.dcm", "MR_truncated.dcm"} <= set(
        handed_over
    )


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "MR_small_implicit.dcm", "emri_small_jpeg_2k_lossless.dcm"]
)
def test_explicit_implicit_and_encapsulated_streams_are_walked(name: str) -> None:
    content = Path(get_testdata_file(name)).read_bytes()
    result = part10.walk(content, {0x00080060})
    assert result.values[0x00080060].value.rstrip() == b"MR"


@pytest.mark.parametrize(
    ("charset", "name"), [("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 192", "Şahin^Ülkü")]
)
def test_text_is_decoded_with_the_dataset_character_set(
    tmp_path: Path, charset: str, name: str
) -> None:
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    path = tmp_path / "names.dcm"
    ds.save_as(path)
    assert name.encode("utf-8") not in path.read_bytes() or charset == "ISO_IR 192"
    assert _walked_header(path).patient_name == _pydicom_header(path).patient_name == name


def _with_nested_sequences(syntax: str) -> bytes:
    """An instance with sequences and items of undefined length, nested three deep."""
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    inner = Dataset()
    inner.CodeValue = "T-A0100"
    middle = Dataset()
    middle.ConceptNameCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([middle, Dataset()])
    for element in (ds["ReferencedImageSequence"], middle["ConceptNameCodeSequence"]):
        element.is_undefined_length = True
        for item in element.value:
            item.is_undefined_length_sequence_item = True
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    ds.save_as(buffer, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    return buffer.getvalue()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_sequences_of_undefined_length_are_walked_to_their_delimiters(syntax: str) -> None:
    content = _with_nested_sequences(syntax)
    assert part10.UNDEFINED_LENGTH.to_bytes(4, "little") in content
    assert part10.walk(content, ()).transfer_syntax_uid == syntax
    delimiter = content.rindex(b"\xfe\xff\xdd\xe0")  # the outer sequence's delimiter
    with pytest.raises(part10.NotWalkable):
        part10.walk(content[:delimiter] + content[delimiter + 8 :], ())


@pytest.mark.parametrize("name", ["MR_small.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_every_truncation_and_any_trailing_bytes_are_refused(name: str) -> None:
    """Cut in the pixel data element (header, value, items, delimiters), or extended.

    A cut exactly between two top-level elements leaves a well-formed, shorter dataset; no
    reader can tell it from the bytes, which is why the C-STORE layer's own framing matters.
    """
    content = Path(get_testdata_file(name)).read_bytes()
    ds = dcmread(BytesIO(content))
    raw = [ds.get_item(tag) for tag in sorted(ds.keys())]
    boundaries = {
        e.value_tell + e.length
        for e in raw
        if isinstance(e, RawDataElement) and e.length != part10.UNDEFINED_LENGTH
    }
    pixel_data = content.rindex(b"\xe0\x7f\x10\x00")
    # The element's header and first items, and its last bytes (items, delimiters)
    cuts = {*range(pixel_data + 1, pixel_data + 2048), *range(len(content) - 2048, len(content))}
    for cut in {c for c in cuts if pixel_data < c < len(content)} - boundaries:
        with pytest.raises(part10.NotWalkable):
            part10.walk(content[:cut], ())
    for tail in (b"\x00", b"\x00" * 8, b"\x08\x00\x10\x00\x02\x00"):
        with pytest.raises(part10.NotWalkable):
            part10.walk(content + tail, ())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_bytes_are_walked_or_handed_over_never_crash(data: st.DataObject) -> None:
    content = bytearray(_with_nested_sequences(ExplicitVRLittleEndian))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(content) - 1))
        content[position] = data.draw(st.integers(0, 255))
    try:
        result = part10.walk(bytes(content), {0x0020000D})
    except part10.NotWalkable:
        return
    # A walk that completes accounted for every byte of the stream, as pydicom would read it.
    assert result.transfer_syntax_uid
