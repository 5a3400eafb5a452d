"""nnU-Net v2, MedMNIST .npz, DICOM-tree and JSON-manifest layouts, with the virtual paths the readers resolve."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medmae.data.layouts import load_dicom_tree, looks_like_dicom_tree, nnunet_regions
from medmae.data.readers import ReadError, read_image, split_virtual
from medmae.data.sources import SourceError, load_source

SHAPE = (4, 5, 6)


def nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


# ---------------------------------------------------------------------------------------------- nnU-Net


def nnunet_folder(root: Path, n_train: int = 3, labels: dict | None = None) -> Path:
    """Two channels (T1 = case index, T2 = 10 x case index) per case, labels 0/1/2, one imagesTs case."""
    meta = {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": labels or {"background": 0, "anterior": 1, "posterior": 2},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for i in range(n_train):
        nifti(root / "imagesTr" / f"hip_{i:03d}_0000.nii.gz", np.full(SHAPE, i, np.float32))
        nifti(root / "imagesTr" / f"hip_{i:03d}_0001.nii.gz", np.full(SHAPE, 10 * i, np.float32))
        nifti(root / "labelsTr" / f"hip_{i:03d}.nii.gz", np.full(SHAPE, i % 3, np.uint8))
    nifti(root / "imagesTs" / "hip_900_0000.nii.gz", np.zeros(SHAPE, np.float32))
    nifti(root / "imagesTs" / "hip_900_0001.nii.gz", np.zeros(SHAPE, np.float32))
    return root


def test_nnunet_cases_have_channel_files_in_order_and_labels(tmp_path):
    root = nnunet_folder(tmp_path / "Dataset004_Hip")
    spec = load_source(root)
    assert spec.kind == "nnunet" and spec.modality == "T1+T2" and spec.spatial_dims == 3
    assert spec.label_names == {0: "background", 1: "anterior", 2: "posterior"}
    by_id = {c.case_id: c for c in spec.cases}
    assert sorted(by_id) == ["hip_000", "hip_001", "hip_002", "hip_900"]
    case = by_id["hip_002"]
    assert [Path(p).name for p in case.image] == ["hip_002_0000.nii.gz", "hip_002_0001.nii.gz"]
    assert Path(case.mask).name == "hip_002.nii.gz" and case.split == "train" and case.subject_id == "hip_002"
    x, _ = read_image(case.image)
    assert x.shape == (2, *SHAPE) and x[0].max() == 2 and x[1].max() == 20
    assert by_id["hip_900"].split == "unlabelled" and by_id["hip_900"].mask is None
    assert [c.case_id for c in load_source(root / "dataset.json").cases] == sorted(by_id)


def test_nnunet_missing_channel_file_is_named(tmp_path):
    root = nnunet_folder(tmp_path / "Dataset004_Hip")
    (root / "imagesTr" / "hip_001_0001.nii.gz").unlink()
    with pytest.raises(SourceError, match=r"hip_001_0001\.nii\.gz: missing channel 1 \(T2\) of case 'hip_001'"):
        load_source(root)


def test_nnunet_missing_label_and_num_training_mismatch(tmp_path):
    root = nnunet_folder(tmp_path / "a")
    (root / "labelsTr" / "hip_002.nii.gz").unlink()
    with pytest.raises(SourceError, match=r"labelsTr/hip_002\.nii\.gz: label file of case 'hip_002' not found"):
        load_source(root)
    root = nnunet_folder(tmp_path / "b")
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
    with pytest.raises(SourceError, match=r"numTraining is 5, but .*imagesTr holds 3 cases"):
        load_source(root)


def test_nnunet_channel_beyond_declared_and_label_without_images(tmp_path):
    root = nnunet_folder(tmp_path / "a")
    nifti(root / "imagesTr" / "hip_000_0002.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(SourceError, match=r"hip_000_0002\.nii\.gz: channel 0002, but dataset.json declares 2"):
        load_source(root)
    root = nnunet_folder(tmp_path / "b")
    nifti(root / "labelsTr" / "hip_777.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(SourceError, match=r"hip_777\.nii\.gz: label file without images"):
        load_source(root)


def test_nnunet_region_labels(tmp_path):
    labels = {"background": 0, "whole": [1, 2], "core": 2}
    root = nnunet_folder(tmp_path / "Dataset005_Regions", labels=labels)
    spec = load_source(root)
    assert spec.label_names == {0: "background", 1: "label_1", 2: "core"}
    assert nnunet_regions(root) == {"whole": [1, 2], "core": [2]}
    (root / "dataset.json").write_text(json.dumps({**json.loads((root / "dataset.json").read_text()),
                                                   "labels": {"background": 0, "bad": "x"}}))
    with pytest.raises(SourceError, match=r"label 'bad' must be an integer or a list of integers, got 'x'"):
        load_source(root)


# --------------------------------------------------------------------------------------------- MedMNIST


def medmnist_2d(path: Path, *, compressed: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 8, 9), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1).astype(np.uint8)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays


@pytest.mark.parametrize("compressed", [False, True])
def test_medmnist_2d_multiclass_official_splits_and_virtual_paths(tmp_path, compressed):
    arrays = medmnist_2d(tmp_path / "pathmnist.npz", compressed=compressed)
    (tmp_path / "pathmnist.json").write_text(json.dumps({"task": "multi-class", "label": {"0": "adipose", "1": "debris", "2": "mucus"}}))
    spec = load_source(tmp_path / "pathmnist.npz")
    assert spec.kind == "medmnist" and spec.spatial_dims == 2 and not spec.multilabel
    assert spec.classes == ["adipose", "debris", "mucus"]
    assert [sum(c.split == s for c in spec.cases) for s in ("train", "val", "test")] == [5, 2, 3]
    case = next(c for c in spec.cases if c.case_id == "test_2")
    assert case.label == "mucus" and case.subject_id == "test_2"
    assert case.image[0].endswith("pathmnist.npz::test_images::2")
    x, meta = read_image(case.image[0])
    assert x.dtype == np.float32 and x.shape == (1, 8, 9)
    np.testing.assert_array_equal(x[0], arrays["test_images"][2].astype(np.float32))
    assert meta.spatial_dims == 2 and meta.spacing == (1.0, 1.0) and meta.source_dtype == "uint8"


def test_medmnist_rgb_multilabel_without_sidecar(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(4, 6, 7, 3), dtype=np.uint8)
    labels = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=np.uint8)
    np.savez(tmp_path / "chestmnist.npz", train_images=images, train_labels=labels)
    spec = load_source(tmp_path / "chestmnist.npz")
    assert spec.multilabel and spec.classes == ["0", "1", "2"]
    assert [c.label for c in spec.cases] == ["0|2", "", "1", "0|1|2"]
    x, meta = read_image(spec.cases[3].image[0])
    assert x.shape == (3, 6, 7) and meta.channel_names == ("R", "G", "B")
    np.testing.assert_array_equal(x, np.moveaxis(images[3], -1, 0).astype(np.float32))


def test_medmnist_3d_volume_is_1dhw_with_identity_geometry(tmp_path):
    vols = np.random.default_rng(2).integers(0, 256, size=(3, 5, 6, 7), dtype=np.uint8)
    np.savez(tmp_path / "organmnist3d.npz", train_images=vols, train_labels=np.array([[0], [1], [1]]))
    spec = load_source(tmp_path / "organmnist3d.npz")
    assert spec.spatial_dims == 3 and [c.label for c in spec.cases] == ["0", "1", "1"]
    x, meta = read_image(spec.cases[1].image[0])
    np.testing.assert_array_equal(x, vols[1][None].astype(np.float32))
    assert meta.spatial_dims == 3 and meta.spacing == (1.0, 1.0, 1.0) and meta.orientation == "RAS"


def test_medmnist_bad_files(tmp_path):
    np.savez(tmp_path / "a.npz", train_images=np.zeros((3, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(SourceError, match=r"a\.npz: train_labels has shape \(2, 1\), expected \(3, K\)"):
        load_source(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", images=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(SourceError, match=r"b\.npz: no <split>_images array .*found \['images'\]"):
        load_source(tmp_path / "b.npz")
    with pytest.raises(ReadError, match=r"index 9 out of range, b\.npz:images holds 3 images"):
        read_image(f"{tmp_path / 'b.npz'}::images::9")


def test_a_real_file_with_colons_is_not_virtual(tmp_path):
    odd = tmp_path / "scan::1.png"
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(odd)
    assert split_virtual(odd) is None
    assert read_image(odd)[0].max() == 7


# ------------------------------------------------------------------------------------------------ DICOM

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


# ----------------------------------------------------------------------------------------- JSON manifest


def test_json_manifest_list_style(tmp_path):
    nifti(tmp_path / "img" / "a.nii.gz", np.zeros(SHAPE, np.float32))
    nifti(tmp_path / "seg" / "a.nii.gz", np.zeros(SHAPE, np.uint8))
    entries = [
        {"image": "img/a.nii.gz", "label": "seg/a.nii.gz", "subject_id": "s1", "split": "Train"},
        {"image": "img/b.png", "label": "pneumonia", "split": "validation"},
        {"image": ["img/c_t1.nii.gz", "img/c_t2.nii.gz"], "label": 2, "mask": "seg/c.nii.gz", "case_id": "c"},
        {"image": "img/d.png", "label": [1, 0, 1]},
    ]
    (tmp_path / "cases.json").write_text(json.dumps(entries))
    spec = load_source(tmp_path / "cases.json")
    a, b, c, d = spec.cases
    assert spec.kind == "json"
    assert a.mask == str((tmp_path / "seg" / "a.nii.gz").resolve()) and a.label is None
    assert (a.subject_id, a.split) == ("s1", "train")
    assert (b.label, b.split, b.mask) == ("pneumonia", "val", None)
    assert c.case_id == "c" and len(c.image) == 2 and c.label == "2" and c.mask.endswith("seg/c.nii.gz")
    assert d.label == "0|2" and spec.multilabel
    assert spec.classes == ["0", "2", "pneumonia"]


def test_json_manifest_monai_datalist(tmp_path):
    datalist = {
        "labels": {"0": "background", "1": "liver"},
        "training": [{"image": "imagesTr/x1.nii.gz", "label": "labelsTr/x1.nii.gz"}],
        "validation": [{"image": "imagesTr/x2.nii.gz", "label": "labelsTr/x2.nii.gz"}],
        "test": ["imagesTs/x3.nii.gz", {"image": "imagesTs/x4.nii.gz"}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    spec = load_source(tmp_path / "datalist.json")
    assert [(c.case_id, c.split, c.mask is not None) for c in spec.cases] == [
        ("x1", "train", True), ("x2", "val", True), ("x3", "test", False), ("x4", "test", False)]
    assert spec.label_names == {0: "background", 1: "liver"}
    assert spec.cases[0].mask == str((tmp_path / "labelsTr" / "x1.nii.gz").resolve())


def test_json_manifest_errors_name_the_entry(tmp_path):
    (tmp_path / "dup.json").write_text(json.dumps([{"image": "a/x.png"}, {"image": "b/x.png"}]))
    with pytest.raises(SourceError, match=r"dup\.json: entries\[1\]: duplicate case id 'x'"):
        load_source(tmp_path / "dup.json")
    (tmp_path / "noimg.json").write_text(json.dumps({"training": [{"label": "y.nii.gz"}]}))
    with pytest.raises(SourceError, match=r"noimg\.json: training\[0\]: 'image' must be a path"):
        load_source(tmp_path / "noimg.json")
    (tmp_path / "obj.json").write_text(json.dumps({"cases": []}))
    with pytest.raises(SourceError, match=r"obj\.json: expected a list of cases or a datalist"):
        load_source(tmp_path / "obj.json")
