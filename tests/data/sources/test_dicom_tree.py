"""DICOM trees (medmae.data.sources.dicom_tree): one case per series, addressable by virtual paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medmae.data.readers import read_image
from medmae.data.sources import load_source
from medmae.data.sources.dicom_tree import load_dicom_tree, looks_like_dicom_tree
from medmae.errors import ReadError

ORIGIN = np.array([-20.0, 30.0, 100.0])
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def dicom_slice(path: Path, pixels: np.ndarray, *, uid: str, offset: np.ndarray, series_number: int,
                iop=AXIAL, localizer: bool = False, patient: str = "P1") -> None:
    """One uint16 CT slice (rows, cols) at ORIGIN + ``offset`` mm (LPS) with RescaleIntercept -1024."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = patient, uid, series_number, "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer else "AXIAL"]
    ds.ImagePositionPatient = [float(v) for v in ORIGIN + offset]
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = [0.8, 0.7]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def dicom_series(folder: Path, stored: np.ndarray, series_number: int, prefix: str, *, uid: str | None = None,
                 iop=AXIAL, normal=(0.0, 0.0, 1.0)) -> str:
    """Slice k of ``stored`` at ORIGIN + 2.5 k mm along ``normal``."""
    uid = uid or generate_uid()
    for k, pixels in enumerate(stored):
        dicom_slice(folder / f"{prefix}{k}.dcm", pixels, uid=uid, offset=2.5 * k * np.array(normal),
                    series_number=series_number, iop=iop)
    return uid


def expected(stored: np.ndarray) -> np.ndarray:
    """(1, X=cols, Y=rows, Z=slices) HU volume as stored."""
    return (stored.astype(np.float32) - 1024).transpose(2, 1, 0)[None]


def test_dicom_tree_two_series_in_one_folder_and_a_localizer(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3000, size=(5, 6, 7)).astype(np.uint16)
    b = rng.integers(0, 3000, size=(3, 6, 7)).astype(np.uint16)
    study = tmp_path / "tree" / "train" / "P1"
    dicom_series(study, a, 3, "a")
    dicom_series(study, b, 4, "b")
    dicom_slice(study / "scout.dcm", a[0], uid=generate_uid(), offset=np.zeros(3), series_number=1,
                localizer=True)
    assert looks_like_dicom_tree(tmp_path / "tree")
    spec = load_source(tmp_path / "tree")
    assert spec.kind == "dicom" and spec.modality == "CT" and spec.spatial_dims == 3
    by_id = {c.case_id: c for c in spec.cases}
    assert sorted(by_id) == ["P1_3", "P1_4"]
    assert {c.subject_id for c in spec.cases} == {"P1"} and {c.split for c in spec.cases} == {"train"}
    for case_id, stored in (("P1_3", a), ("P1_4", b)):
        path = by_id[case_id].image[0]
        assert path.startswith(f"{study}::")
        x, meta = read_image(path, reorient=False)
        np.testing.assert_array_equal(x, expected(stored))
        assert meta.modality == "CT"


def test_dicom_uid_split_by_orientation_is_two_addressable_cases(tmp_path):
    rng = np.random.default_rng(1)
    axial = rng.integers(0, 3000, size=(4, 6, 7)).astype(np.uint16)
    coronal = rng.integers(0, 3000, size=(3, 6, 7)).astype(np.uint16)
    uid = dicom_series(tmp_path / "ct", axial, 2, "ax")
    dicom_series(tmp_path / "ct", coronal, 2, "co", uid=uid, iop=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
                 normal=(0.0, 1.0, 0.0))
    spec = load_dicom_tree(tmp_path / "ct")
    assert len(spec.cases) == 2 and all(c.image[0].startswith(f"{tmp_path / 'ct'}::{uid}::") for c in spec.cases)
    assert len({c.case_id for c in spec.cases}) == 2
    shapes = sorted(read_image(c.image[0], reorient=False)[0].shape[-1] for c in spec.cases)
    assert shapes == [3, 4]
    with pytest.raises(ReadError, match="expected one DICOM series, found 0"):
        read_image(f"{tmp_path / 'ct'}::{uid}::7")


def test_single_file_dicom_images_stay_a_plain_folder(tmp_path):
    """Radiograph-style: one file per series, sorted into class folders that give the labels."""
    rng = np.random.default_rng(2)
    for cls in ("normal", "pneumonia"):
        for k in range(2):
            dicom_slice(tmp_path / "cxr" / cls / f"{k}.dcm", rng.integers(0, 3000, size=(6, 7)).astype(np.uint16),
                        uid=generate_uid(), offset=np.zeros(3), series_number=1)
    assert not looks_like_dicom_tree(tmp_path / "cxr")
    spec = load_source(tmp_path / "cxr")
    assert spec.kind == "folder" and spec.classes == ["normal", "pneumonia"]
