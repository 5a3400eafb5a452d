"""Tests for medmae.data.synthetic: determinism, documented ranges, anatomy, findings and writers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medmae.data import synthetic as syn

CT_SMALL = (40, 40, 24)
MR_SMALL = (32, 32, 32)


def _core(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Mask eroded away from the blurred organ borders (volume borders count as inside)."""
    return ndimage.binary_erosion(mask, iterations=iterations, border_value=1)


def _world_centroid(mask_xyz: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask_xyz).mean(axis=0)
    return (affine @ np.append(ijk, 1.0))[:3]


# ------------------------------------------------------------------------------------------ chest x-ray


def test_cxr_same_seed_is_identical_and_other_seed_differs() -> None:
    a, b, c = syn.chest_xray(3, 128), syn.chest_xray(3, 128), syn.chest_xray(4, 128)
    for field in ("image_chw", "labels", "anatomy", "findings_mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.image_chw, c.image_chw)
    assert not np.array_equal(a.anatomy, c.anatomy)


def test_cxr_dtypes_shapes_and_ranges() -> None:
    case = syn.chest_xray(7, 96)
    assert case.image_chw.dtype == np.float32 and case.image_chw.shape == (1, 96, 96)
    assert 0.0 <= case.image_chw.min() and case.image_chw.max() <= 1.0
    assert case.image_chw.std() > 0.05
    assert case.labels.dtype == np.float32 and case.labels.shape == (len(syn.CXR_FINDINGS),)
    assert set(np.unique(case.labels)) <= {0.0, 1.0}
    assert case.anatomy.dtype == np.uint8 and case.anatomy.shape == (96, 96)
    assert set(np.unique(case.anatomy)) == {0, 1, 2}
    assert case.findings_mask.dtype == np.uint8 and case.findings_mask.shape == (96, 96)
    present_codes = {j + 1 for j, on in enumerate(case.labels) if on}
    assert set(np.unique(case.findings_mask)) - {0} <= present_codes
    assert case.spacing[0] == case.spacing[1] > 0
    assert syn.chest_xray(7, 192).spacing[0] == pytest.approx(case.spacing[0] / 2)
    assert case.seed == 7


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("code, finding", list(enumerate(syn.CXR_FINDINGS, start=1)))
def test_cxr_forced_finding_brightens_only_its_region(seed: int, code: int, finding: str) -> None:
    base = syn.chest_xray(seed, 128, findings=[])
    case = syn.chest_xray(seed, 128, findings=[finding])
    expected = np.zeros(len(syn.CXR_FINDINGS), np.float32)
    expected[code - 1] = 1.0
    np.testing.assert_array_equal(case.labels, expected)
    np.testing.assert_array_equal(base.labels, np.zeros_like(expected))
    np.testing.assert_array_equal(case.anatomy, base.anatomy)
    assert not base.findings_mask.any()

    region = case.findings_mask == code
    assert region.any() and set(np.unique(case.findings_mask)) == {0, code}
    assert np.all(case.anatomy[region] == 1), "findings lie inside the lungs"
    diff = (case.image_chw - base.image_chw)[0]
    lung_sd = base.image_chw[0][base.anatomy == 1].std()
    assert diff[region].mean() > max(0.05, 1.0 * lung_sd)
    far = ~ndimage.binary_dilation(region, iterations=6)
    assert np.abs(diff[far]).max() < 0.3 * diff[region].mean()


def test_cxr_drawn_findings_equal_forcing_the_same_findings() -> None:
    for seed in range(12):
        drawn = syn.chest_xray(seed, 64)
        names = [f for f, on in zip(syn.CXR_FINDINGS, drawn.labels) if on]
        forced = syn.chest_xray(seed, 64, findings=names)
        np.testing.assert_array_equal(drawn.image_chw, forced.image_chw)
        np.testing.assert_array_equal(drawn.findings_mask, forced.findings_mask)


def test_cxr_prevalence_is_about_a_third_per_finding() -> None:
    labels = np.stack([syn.chest_xray(seed, 32).labels for seed in range(200)])
    prevalence = labels.mean(axis=0)
    assert np.all((prevalence > 0.22) & (prevalence < 0.48)), prevalence
    assert (labels.sum(axis=1) == 0).any() and (labels.sum(axis=1) >= 2).any()


def test_cxr_anatomy_fractions_and_layout() -> None:
    for seed in range(5):
        case = syn.chest_xray(seed, 128, findings=[])
        lung, heart = case.anatomy == 1, case.anatomy == 2
        assert 0.15 <= lung.mean() <= 0.45
        assert 0.03 <= heart.mean() <= 0.12
        half = case.anatomy.shape[1] // 2
        assert lung[:, :half].sum() > 0.3 * lung.sum() and lung[:, half:].sum() > 0.3 * lung.sum()
        # Radiological view: the heart bulges to the patient's left, i.e. the image's right.
        assert np.argwhere(heart)[:, 1].mean() > half
        image = case.image_chw[0]
        assert image[lung].mean() + 0.1 < image[heart].mean()


def test_cxr_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown findings.*pneumothorax"):
        syn.chest_xray(0, 64, findings=["nodule", "pneumothorax"])
    with pytest.raises(ValueError, match="sequence of names"):
        syn.chest_xray(0, 64, findings="nodule")
    with pytest.raises(ValueError, match="size must be an int >= 32.*16"):
        syn.chest_xray(0, 16)
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        syn.chest_xray(-1)


# ------------------------------------------------------------------------------------------ abdomen CT


def test_abdomen_ct_deterministic_shapes_and_affine() -> None:
    a, b, c = syn.abdomen_ct(5, CT_SMALL), syn.abdomen_ct(5, CT_SMALL), syn.abdomen_ct(6, CT_SMALL)
    np.testing.assert_array_equal(a.image_cxyz, b.image_cxyz)
    np.testing.assert_array_equal(a.label_xyz, b.label_xyz)
    assert not np.array_equal(a.image_cxyz, c.image_cxyz)
    assert a.image_cxyz.dtype == np.float32 and a.image_cxyz.shape == (1, *CT_SMALL)
    assert a.label_xyz.dtype == np.uint8 and a.label_xyz.shape == CT_SMALL
    assert set(np.unique(a.label_xyz)) == set(syn.ABDOMEN_LABELS)
    assert a.label_names == syn.ABDOMEN_LABELS and a.channel_names == ("CT",)
    assert a.affine.dtype == np.float64 and a.affine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(a.affine)[:3], (1.5, 1.5, 2.0))
    assert nib.aff2axcodes(a.affine) == ("R", "A", "S")
    hu = a.image_cxyz[0]
    assert -1024.0 <= hu.min() and hu.max() <= 3071.0
    assert abs(hu[:3, :3, :].mean() + 1000.0) < 15.0, "air outside the body"
    assert hu.max() > 500.0, "bone present"


@pytest.mark.parametrize("seed", [0, 1])
def test_abdomen_ct_organ_hu_match_documented_ranges(seed: int) -> None:
    case = syn.abdomen_ct(seed)
    hu, label = case.image_cxyz[0], case.label_xyz
    tissue = {"liver": "liver", "spleen": "spleen", "aorta": "aorta"}
    tissue.update(kidney_right="kidney", kidney_left="kidney")
    for lab_id, name in syn.ABDOMEN_LABELS.items():
        if lab_id == 0:
            continue
        core = _core(label == lab_id)
        assert core.sum() > 20, name
        lo, hi = syn.ABDOMEN_HU[tissue[name]]
        assert lo - 8.0 <= hu[core].mean() <= hi + 8.0, (name, float(hu[core].mean()))
    fat_lo, fat_hi = syn.ABDOMEN_HU["subcutaneous_fat"]
    assert hu[(label == 0) & (hu > -300) & (hu < -50)].size > 0
    assert fat_lo - 40 < np.median(hu[(hu > -300) & (hu < -50)]) < fat_hi + 40


@pytest.mark.parametrize("seed", [0, 3])
def test_abdomen_ct_liver_is_on_the_patient_right(seed: int) -> None:
    case = syn.abdomen_ct(seed, CT_SMALL)
    liver = _world_centroid(case.label_xyz == 1, case.affine)
    spleen = _world_centroid(case.label_xyz == 2, case.affine)
    kidney_r = _world_centroid(case.label_xyz == 3, case.affine)
    kidney_l = _world_centroid(case.label_xyz == 4, case.affine)
    body = _world_centroid(case.image_cxyz[0] > -500, case.affine)
    # RAS+: world x grows towards the patient's right.
    assert liver[0] > body[0] > spleen[0]
    assert kidney_r[0] > body[0] > kidney_l[0]
    spine = _world_centroid(case.image_cxyz[0] > 500, case.affine)
    assert spine[1] < body[1], "spine is posterior (smaller y in RAS)"


def test_abdomen_ct_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match=r"shape must be 3 ints >= 16, got \(8, 32, 32\)"):
        syn.abdomen_ct(0, (8, 32, 32))
    with pytest.raises(ValueError, match=r"spacing.*\(1.0, 0.0, 1.0\)"):
        syn.abdomen_ct(0, CT_SMALL, (1.0, 0.0, 1.0))


# -------------------------------------------------------------------------------------------- brain MR


def test_brain_mr_deterministic_shapes_and_background() -> None:
    a, b, c = syn.brain_mr(2, MR_SMALL), syn.brain_mr(2, MR_SMALL), syn.brain_mr(3, MR_SMALL)
    np.testing.assert_array_equal(a.image_cxyz, b.image_cxyz)
    np.testing.assert_array_equal(a.label_xyz, b.label_xyz)
    assert not np.array_equal(a.image_cxyz, c.image_cxyz)
    assert a.image_cxyz.dtype == np.float32 and a.image_cxyz.shape == (1, *MR_SMALL)
    assert a.label_xyz.dtype == np.uint8 and a.label_names == syn.BRATS_LABELS
    assert a.channel_names == ("T1w",)
    image = a.image_cxyz[0]
    assert image.min() == 0.0
    assert image[0, 0, 0] == 0.0 and image[-1, -1, -1] == 0.0, "air is exactly zero"
    head = image > 0
    assert 0.2 < head.mean() < 0.8
    assert np.all(a.label_xyz[~head] == 0)
    assert nib.aff2axcodes(a.affine) == ("R", "A", "S")


def test_brain_mr_four_channels_share_anatomy_and_t1w_channel() -> None:
    one = syn.brain_mr(4, channels=1)
    four = syn.brain_mr(4, channels=4)
    assert four.channel_names == syn.BRAIN_MR_CHANNELS and four.image_cxyz.shape == (4, 64, 64, 64)
    np.testing.assert_array_equal(one.label_xyz, four.label_xyz)
    np.testing.assert_array_equal(one.image_cxyz[0], four.image_cxyz[four.channel_names.index("T1w")])
    head = four.image_cxyz > 0
    assert np.all(head == head[:1]), "every channel has the same head outline"
    assert set(np.unique(four.label_xyz)) == set(syn.BRATS_LABELS)


def test_brain_mr_tumour_contrast_differs_across_channels() -> None:
    seed = 9
    with_tumour = syn.brain_mr(seed, channels=4, tumour=True)
    healthy = syn.brain_mr(seed, channels=4, tumour=False)
    ch = {name: i for i, name in enumerate(with_tumour.channel_names)}
    edema, enhancing, necrotic = (with_tumour.label_xyz == k for k in (1, 3, 2))
    img, ref = with_tumour.image_cxyz, healthy.image_cxyz

    def change(name: str, region: np.ndarray) -> float:
        return float(img[ch[name]][region].mean() / ref[ch[name]][region].mean())

    # Same anatomy and noise without the tumour, so these ratios isolate the tumour's signal.
    assert change("FLAIR", edema) > 1.3 and change("T2w", edema) > 1.3
    assert change("T1w", edema) < 0.9
    t1gd_rim = img[ch["T1gd"]][enhancing].mean() / img[ch["T1gd"]][necrotic].mean()
    t1w_rim = img[ch["T1w"]][enhancing].mean() / img[ch["T1w"]][necrotic].mean()
    assert t1gd_rim > 1.8 and t1gd_rim > 1.4 * t1w_rim
    cube = np.ones((3, 3, 3), bool)
    far = ~ndimage.binary_dilation(with_tumour.label_xyz > 0, structure=cube, iterations=3)
    np.testing.assert_array_equal(img[:, far], ref[:, far])


def test_brain_mr_tissue_labels_and_contrasts_without_tumour() -> None:
    case = syn.brain_mr(1, channels=4, tumour=False)
    assert case.label_names == syn.BRAIN_TISSUE_LABELS
    assert set(np.unique(case.label_xyz)) == {0, 1, 2, 3}
    ch = {name: i for i, name in enumerate(case.channel_names)}
    mean = {
        (name, k): float(case.image_cxyz[ch[name]][_core(case.label_xyz == k, 1)].mean())
        for name in ("T1w", "T2w") for k in (1, 2, 3)
    }
    assert mean["T1w", 3] > mean["T1w", 2] > mean["T1w", 1], "T1: white > grey > CSF"
    assert mean["T2w", 1] > mean["T2w", 2] > mean["T2w", 3], "T2: CSF > grey > white"


def test_brain_mr_rejects_unsupported_channel_count() -> None:
    with pytest.raises(ValueError, match="channels must be 1 .* or 4.*got 3"):
        syn.brain_mr(0, MR_SMALL, channels=3)


# --------------------------------------------------------------------------------------------- writers


def _read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_write_dataset_cxr_round_trip(tmp_path: Path) -> None:
    manifest = syn.write_dataset(tmp_path / "cxr", "cxr", n=6, seed=11, size=64)
    assert manifest == tmp_path / "cxr" / "manifest.csv"
    columns, rows = _read_manifest(manifest)
    assert columns == ["path", "label", "mask", "subject_id"]
    meta = json.loads((manifest.parent / "dataset.json").read_text())
    assert meta["kind"] == "cxr" and meta["spatial_dims"] == 2 and meta["multilabel"] is True
    assert meta["classes"] == list(syn.CXR_FINDINGS)
    assert meta["labels"] == {"0": "background", "1": "lung", "2": "heart"}
    assert meta["intensity"] == "xray_histeq"
    assert len(rows) == len(meta["case_seeds"]) == 6

    for row, case_seed in zip(rows, meta["case_seeds"]):
        assert "\\" not in row["path"] and not Path(row["path"]).is_absolute()
        assert row["path"].startswith("images/") and row["mask"].startswith("masks/")
        case = syn.chest_xray(case_seed, size=64)
        with Image.open(manifest.parent / row["path"]) as im:
            assert im.mode == "L"
            pixels = np.asarray(im)
        np.testing.assert_array_equal(pixels, np.rint(case.image_chw[0] * 255).astype(np.uint8))
        with Image.open(manifest.parent / row["mask"]) as im:
            np.testing.assert_array_equal(np.asarray(im), case.anatomy)
        assert row["label"] == "|".join(f for f, on in zip(syn.CXR_FINDINGS, case.labels) if on)


def test_write_dataset_subject_ids_pair_some_cases(tmp_path: Path) -> None:
    _, rows = _read_manifest(syn.write_dataset(tmp_path, "cxr", n=9, size=32))
    subjects = [row["subject_id"] for row in rows]
    counts = {s: subjects.count(s) for s in subjects}
    assert max(counts.values()) == 2 and min(counts.values()) == 1
    assert 0.25 <= sum(c == 2 for c in counts.values()) / len(counts) <= 0.6
    assert len({row["path"] for row in rows}) == 9


def test_write_dataset_abdomen_ct_round_trip(tmp_path: Path) -> None:
    manifest = syn.write_dataset(tmp_path, "abdomen_ct", n=2, seed=1, shape=CT_SMALL)
    _, rows = _read_manifest(manifest)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["labels"] == {str(k): v for k, v in syn.ABDOMEN_LABELS.items()}
    assert meta["intensity"] == {"name": "ct_window", "lo": -175, "hi": 250}
    assert meta["classes"] == [] and meta["multilabel"] is False and meta["spatial_dims"] == 3
    assert "training" not in meta, "no MSD 'training' list: readers must use the manifest's subject ids"
    for row, case_seed in zip(rows, meta["case_seeds"]):
        assert row["label"] == "" and row["path"].startswith("imagesTr/") and row["path"].endswith(".nii.gz")
        case = syn.abdomen_ct(case_seed, shape=CT_SMALL)
        img = nib.load(tmp_path / row["path"])
        assert img.get_data_dtype() == np.int16
        data = np.asanyarray(img.dataobj)
        assert data.dtype == np.int16
        np.testing.assert_allclose(data, case.image_cxyz[0], atol=0.5)
        np.testing.assert_allclose(img.affine, case.affine)
        seg = nib.load(tmp_path / row["mask"])
        assert seg.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asanyarray(seg.dataobj), case.label_xyz)
        np.testing.assert_allclose(seg.affine, case.affine)


def test_write_dataset_brain_mr_four_channels_as_4d_nifti(tmp_path: Path) -> None:
    manifest = syn.write_dataset(tmp_path, "brain_mr", n=1, seed=2, shape=MR_SMALL, channels=4)
    _, rows = _read_manifest(manifest)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["modality"] == {str(i): c for i, c in enumerate(syn.BRAIN_MR_CHANNELS)}
    assert meta["labels"] == {str(k): v for k, v in syn.BRATS_LABELS.items()}
    assert meta["intensity"] == "mri_zscore_nonzero"
    case = syn.brain_mr(meta["case_seeds"][0], shape=MR_SMALL, channels=4)
    img = nib.load(tmp_path / rows[0]["path"])
    assert img.shape == (*MR_SMALL, 4) and img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.moveaxis(case.image_cxyz, 0, -1))
    np.testing.assert_allclose(img.affine, case.affine)


def test_write_dataset_is_byte_identical(tmp_path: Path) -> None:
    for kind, kwargs in (("cxr", {"size": 48}), ("abdomen_ct", {"shape": (24, 24, 16)})):
        first = syn.write_dataset(tmp_path / "a" / kind, kind, n=3, seed=5, **kwargs).parent
        second = syn.write_dataset(tmp_path / "b" / kind, kind, n=3, seed=5, **kwargs).parent
        files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
        assert len(files) == 3 * 2 + 2
        for rel in files:
            assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
            if rel.name.endswith(".gz"):
                header = (first / rel).read_bytes()[:10]
                # Equal bytes within one second could hide a timestamp: check gzip MTIME=0, no FNAME.
                assert header[4:8] == b"\0\0\0\0" and not header[3] & 0x08, rel
        other = syn.write_dataset(tmp_path / "c" / kind, kind, n=3, seed=6, **kwargs).parent
        image = next(rel for rel in files if rel.parts[0].startswith("images"))
        assert (other / image).read_bytes() != (first / image).read_bytes()


def test_write_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of.*'mammo'"):
        syn.write_dataset(tmp_path, "mammo", n=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        syn.write_dataset(tmp_path, "cxr", n=0)
