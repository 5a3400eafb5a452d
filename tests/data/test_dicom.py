"""DICOM series discovery and reading on synthetic series written with pydicom, plus pydicom's test files."""

from __future__ import annotations

import importlib.util
import shutil
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from medmae.data.dicom import DicomSeries, find_series, read_series, scan_dicom_tree
from medmae.data.readers import read_image
from medmae.errors import ReadError

ROWS, COLS, N_SLICES = 12, 16, 8
ROW_MM, COL_MM, SLICE_MM = 0.8, 0.7, 2.5  # PixelSpacing = (between rows, between columns)
ORIGIN_LPS = np.array([-20.0, 30.0, 100.0])
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _stored_values(seed: int = 0) -> np.ndarray:
    """(slice, row, col) uint16 values with the two HU landmarks of the brief in slices 0 and 1."""
    stored = np.random.default_rng(seed).integers(0, 3000, size=(N_SLICES, ROWS, COLS)).astype(np.uint16)
    stored[0, 0, 0] = 0
    stored[1, 0, 0] = 1064
    stored[2, 0, 0] = 65535
    return stored


def _write_slice(
    path: Path,
    pixels_rc: np.ndarray,
    *,
    series_uid: str,
    ipp: np.ndarray,
    iop: tuple[float, ...] = AXIAL,
    instance: int = 1,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
) -> None:
    """One CT slice: uint16 pixels (rows, cols), RescaleIntercept -1024, Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.SeriesDescription = "synthetic"
    ds.ImageType = list(image_type)
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = [ROW_MM, COL_MM]
    ds.SliceThickness = SLICE_MM
    ds.Rows, ds.Columns = pixels_rc.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = pixels_rc.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_series(
    folder: Path,
    stored: np.ndarray,
    *,
    series_uid: str | None = None,
    iop: tuple[float, ...] = AXIAL,
    slice_dir: np.ndarray = np.array([0.0, 0.0, 1.0]),
    order: np.ndarray | None = None,
    names: list[str] | None = None,
) -> str:
    """Slice k (of ``stored``) at ORIGIN + k * SLICE_MM * slice_dir; files written in ``order`` with ``names``."""
    uid = series_uid or generate_uid()
    order = np.arange(len(stored)) if order is None else order
    for n, k in enumerate(order):
        name = names[n] if names else f"{uuid.uuid4().hex}.dcm"
        ipp = ORIGIN_LPS + k * SLICE_MM * slice_dir
        # InstanceNumber deliberately follows file order, not position: the reader must ignore it.
        _write_slice(folder / name, stored[k], series_uid=uid, ipp=ipp, iop=iop, instance=n + 1)
    return uid


def _expected_stored_volume(stored: np.ndarray) -> np.ndarray:
    """(1, X=cols, Y=rows, Z=slices) in HU, straight from the DICOM definition."""
    return (stored.astype(np.float32) - 1024.0).transpose(2, 1, 0)[None]


def test_shuffled_random_names_read_as_sorted_volume(tmp_path):
    stored = _stored_values()
    order = np.random.default_rng(1).permutation(N_SLICES)
    _write_series(tmp_path / "ct", stored, order=order)
    x, meta = read_series(tmp_path / "ct", reorient=False)
    np.testing.assert_array_equal(x, _expected_stored_volume(stored))
    assert x.dtype == np.float32
    assert meta.source_dtype == "uint16" and meta.modality == "CT"
    assert meta.path == str(tmp_path / "ct")
    x_img, _ = read_image(tmp_path / "ct", reorient=False)
    np.testing.assert_array_equal(x_img, x)


def test_hu_rescale_is_float_without_wraparound(tmp_path):
    stored = _stored_values()
    _write_series(tmp_path / "ct", stored)
    x, _ = read_series(tmp_path / "ct", reorient=False)
    assert x[0, 0, 0, 0] == -1024.0  # stored 0
    assert x[0, 0, 0, 1] == 40.0  # stored 1064
    assert x[0, 0, 0, 2] == 65535.0 - 1024.0  # uint16 maximum, no wrap to negative


def test_axial_geometry_stored_and_reoriented_to_ras(tmp_path):
    stored = _stored_values()
    _write_series(tmp_path / "ct", stored)
    x_lps, meta_lps = read_series(tmp_path / "ct", reorient=False)
    expected_affine = np.array(
        [
            [-COL_MM, 0, 0, -ORIGIN_LPS[0]],
            [0, -ROW_MM, 0, -ORIGIN_LPS[1]],
            [0, 0, SLICE_MM, ORIGIN_LPS[2]],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(meta_lps.affine, expected_affine, atol=1e-6)
    assert meta_lps.orientation == "LPS"

    x_ras, meta = read_series(tmp_path / "ct")
    assert (meta.orientation, meta.original_orientation) == ("RAS", "LPS")
    np.testing.assert_array_equal(x_ras, x_lps[:, ::-1, ::-1, :])
    # RAS voxel (0, 0, 0) is the last column / last row of the first slice.
    corner_lps = ORIGIN_LPS + (COLS - 1) * COL_MM * np.array([1, 0, 0]) + (ROWS - 1) * ROW_MM * np.array([0, 1, 0])
    np.testing.assert_allclose(meta.affine[:3, 3], corner_lps * [-1, -1, 1], atol=1e-6)
    np.testing.assert_allclose(meta.affine[:3, :3], np.diag([COL_MM, ROW_MM, SLICE_MM]), atol=1e-6)
    assert meta.spacing == pytest.approx((COL_MM, ROW_MM, SLICE_MM))
    np.testing.assert_allclose(meta.original_affine, expected_affine, atol=1e-6)
    assert meta.original_shape == (COLS, ROWS, N_SLICES)


def test_reversed_file_order_gives_same_volume_and_geometry(tmp_path):
    stored = _stored_values()
    forward_names = [f"IM{n:04d}" for n in range(N_SLICES)]
    _write_series(tmp_path / "fwd", stored, names=forward_names)
    _write_series(tmp_path / "rev", stored, order=np.arange(N_SLICES)[::-1], names=forward_names)
    x_fwd, meta_fwd = read_series(tmp_path / "fwd")
    x_rev, meta_rev = read_series(tmp_path / "rev")
    np.testing.assert_array_equal(x_rev, x_fwd)
    np.testing.assert_allclose(meta_rev.affine, meta_fwd.affine)
    # The first file by name is the top slice in "rev": it must not become slice 0.
    assert pydicom.dcmread(tmp_path / "rev" / "IM0000").ImagePositionPatient[2] == pytest.approx(
        ORIGIN_LPS[2] + (N_SLICES - 1) * SLICE_MM
    )


def test_oblique_series_affine_maps_voxels_to_their_patient_positions(tmp_path):
    stored = _stored_values()
    angle = np.deg2rad(30.0)
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    col = np.array([0.0, 0.0, -1.0])
    normal = np.array([-np.sin(angle), np.cos(angle), 0.0])  # row x col, worked out by hand
    order = np.random.default_rng(2).permutation(N_SLICES)
    _write_series(tmp_path / "obl", stored, iop=(*row, *col), slice_dir=normal, order=order)
    x, meta = read_series(tmp_path / "obl")

    idx = np.indices(x.shape[1:]).reshape(3, -1)
    world_ras = meta.affine[:3, :3] @ idx + meta.affine[:3, 3:4]
    offset_lps = world_ras * np.array([[-1.0], [-1.0], [1.0]]) - ORIGIN_LPS[:, None]
    i_col = offset_lps.T @ row / COL_MM
    j_row = offset_lps.T @ col / ROW_MM
    k_slice = offset_lps.T @ normal / SLICE_MM
    for coord in (i_col, j_row, k_slice):
        np.testing.assert_allclose(coord, np.rint(coord), atol=1e-4)
    i_col, j_row, k_slice = (np.rint(c).astype(int) for c in (i_col, j_row, k_slice))
    expected = stored[k_slice, j_row, i_col].astype(np.float32) - 1024.0
    np.testing.assert_array_equal(x[0].reshape(-1), expected)
    assert sorted(meta.spacing) == pytest.approx(sorted((COL_MM, ROW_MM, SLICE_MM)))


def test_missing_slice_raises_naming_series(tmp_path):
    stored = _stored_values()
    names = [f"s{n}.dcm" for n in range(N_SLICES)]
    uid = _write_series(tmp_path / "ct", stored, names=names)
    (tmp_path / "ct" / "s4.dcm").unlink()
    with pytest.raises(ReadError, match="non-uniform slice spacing") as info:
        read_series(tmp_path / "ct")
    assert uid in str(info.value) and str(tmp_path / "ct") in str(info.value)
    assert f"{2 * SLICE_MM:.3f}" in str(info.value)


def test_duplicate_slice_raises(tmp_path):
    stored = _stored_values()
    _write_series(tmp_path / "ct", stored, names=[f"s{n}.dcm" for n in range(N_SLICES)])
    shutil.copy(tmp_path / "ct" / "s3.dcm", tmp_path / "ct" / "copy_of_s3.dcm")
    with pytest.raises(ReadError, match="duplicate slice position") as info:
        read_series(tmp_path / "ct")
    assert "s3.dcm" in str(info.value)


def test_two_series_in_one_folder(tmp_path):
    stored = _stored_values()
    uid_a = _write_series(tmp_path / "study", stored)
    uid_b = _write_series(tmp_path / "study", stored[:4])
    series = find_series(tmp_path / "study")
    assert sorted(s.uid for s in series) == sorted([uid_a, uid_b])
    assert sorted(len(s.files) for s in series) == [4, N_SLICES]
    with pytest.raises(ReadError, match="2 DICOM series") as info:
        read_image(tmp_path / "study")
    assert uid_a in str(info.value) and uid_b in str(info.value)
    by_uid = {s.uid: s for s in series}
    x, _ = read_series(by_uid[uid_b], reorient=False)
    np.testing.assert_array_equal(x, _expected_stored_volume(stored[:4]))


def test_localizer_in_same_uid_is_split_off_and_skipped(tmp_path):
    stored = _stored_values()
    uid = _write_series(tmp_path / "ct", stored)
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    _write_slice(
        tmp_path / "ct" / "scout.dcm",
        stored[0],
        series_uid=uid,
        ipp=ORIGIN_LPS,
        iop=sagittal,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    series = find_series(tmp_path / "ct")
    assert [s.uid for s in series] == [uid, uid]
    assert sorted(s.is_localizer for s in series) == [False, True]
    assert {s.part for s in series} == {"1/2", "2/2"}
    x, _ = read_image(tmp_path / "ct", reorient=False)
    np.testing.assert_array_equal(x, _expected_stored_volume(stored))


def test_mixed_orientation_in_one_uid_is_split(tmp_path):
    stored = _stored_values()
    uid = _write_series(tmp_path / "ct", stored)
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    _write_series(tmp_path / "ct", stored[:3], series_uid=uid, iop=coronal, slice_dir=np.array([0.0, 1.0, 0.0]))
    series = find_series(tmp_path / "ct")
    assert sorted(len(s.files) for s in series) == [3, N_SLICES]
    assert {s.orientation for s in series} == {AXIAL, coronal}
    with pytest.raises(ReadError, match="2 DICOM series"):
        read_image(tmp_path / "ct")


def test_non_dicom_files_are_ignored_and_counted_and_a_broken_dcm_is_named(tmp_path):
    stored = _stored_values()
    _write_series(tmp_path / "ct", stored)
    (tmp_path / "ct" / "README.txt").write_text("not a dicom file\n")
    (tmp_path / "ct" / "sub").mkdir()
    (tmp_path / "ct" / "sub" / "junk.dcm").write_bytes(b"\x00" * 50)
    scan = scan_dicom_tree(tmp_path / "ct")
    assert len(scan.series) == 1 and len(scan.series[0].files) == N_SLICES
    assert [Path(p).name for p in scan.non_dicom] == ["README.txt"]
    assert [Path(b.path).name for b in scan.broken] == ["junk.dcm"], "a .dcm file that does not parse is broken"
    x, _ = read_image(tmp_path / "ct", reorient=False)  # a broken file in another folder is not its slice
    np.testing.assert_array_equal(x, _expected_stored_volume(stored))


def test_empty_folder_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ReadError, match="no DICOM image series") as info:
        read_image(tmp_path)
    assert str(info.value).startswith(str(tmp_path))


def test_single_file_dx_monochrome1_is_inverted_2d(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, size=(10, 14)).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.ImagerPixelSpacing = [0.15, 0.2]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "chest", enforce_file_format=True)  # no suffix: found by the DICM magic

    x, m = read_image(tmp_path / "chest")
    assert x.shape == (1, 10, 14) and m.spatial_dims == 2
    np.testing.assert_array_equal(x[0], 4095.0 - pixels)
    assert m.spacing == (0.15, 0.2) and m.affine is None and m.modality == "DX"
    x_folder, _ = read_image(tmp_path)  # a folder with a single-file series is 2D too
    np.testing.assert_array_equal(x_folder, x)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm"])
def test_pydicom_test_files_match_modality_lut(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    x, meta = read_image(path)
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    assert x.shape == (1, ds.Rows, ds.Columns)
    np.testing.assert_allclose(x[0], expected)
    assert meta.spacing == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    assert meta.modality == ds.Modality


def test_pydicom_colour_jpeg_reads_as_rgb():
    x, meta = read_image(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert x.shape == (3, 100, 100) and meta.channel_names == ("R", "G", "B")
    grey, _ = read_image(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"), grey=True)
    assert grey.shape == (1, 100, 100)


def test_jpeg_extended_decodes_or_names_codec_and_extra():
    path = get_testdata_file("JPEG-lossy.dcm")
    if importlib.util.find_spec("pylibjpeg") is not None:
        x, _ = read_image(path)
        assert x.shape == (1, 1024, 256)
        return
    with pytest.raises(ReadError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(path)
    assert "JPEG Extended" in message and "1.2.840.10008.1.2.4.51" in message
    assert "pip install 'medmae[dicom-codecs]'" in message


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("MR_truncated.dcm", "truncated pixel data"),
        ("SC_rgb_rle_2frame.dcm", "multi-frame"),
        ("rtplan.dcm", "no pixel data"),
    ],
)
def test_unusable_dicom_files_raise_naming_file(name, match):
    path = get_testdata_file(name)
    with pytest.raises(ReadError, match=match) as info:
        read_image(path)
    assert str(info.value).startswith(path)


def test_series_label_names_uid_and_part():
    s = DicomSeries("1.2.3", ("/a/x.dcm", "/a/y.dcm"), "CT", "chest", 12, 16, AXIAL, True, "2/3")
    assert s.folder == "/a"
    assert "1.2.3" in s.label and "part 2/3" in s.label and "localizer" in s.label
