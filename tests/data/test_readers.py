"""NIfTI / NRRD / MHA / Pillow reading (medmae.data.readers and the format modules it dispatches to), label
checks and write_like round trips on files written in the tests."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medmae.data.readers import is_image_file, nonfinite_count, read_image, read_label, split_virtual
from medmae.data.writers import write_like
from medmae.errors import ReadError

# Voxel axes -> world: LAS flips x; LPS flips x and y; "PLS"-like permutes the first two axes.
AFFINES = {
    "LAS": np.array([[-1.5, 0, 0, 10.0], [0, 2.0, 0, -5.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]]),
    "LPS": np.array([[-1.5, 0, 0, 10.0], [0, -2.0, 0, 7.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]]),
    "PLS": np.array([[0, -2.0, 0, 4.0], [-1.5, 0, 0, 9.0], [0, 0, 2.5, -1.0], [0, 0, 0, 1]]),
}


def _phantom(shape=(5, 6, 7), seed=0) -> np.ndarray:
    """Distinct values per voxel so any flip/permutation error shows."""
    return np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape).astype(np.float32)


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _assert_voxels_line_up(x_returned, affine_returned, x_stored, affine_stored):
    """Every returned voxel, mapped through its affine to world and back through the stored affine,
    lands on a stored voxel with the same value."""
    idx = np.indices(x_returned.shape).reshape(3, -1)
    world = affine_returned[:3, :3] @ idx + affine_returned[:3, 3:4]
    inv = np.linalg.inv(affine_stored)
    stored_idx = inv[:3, :3] @ world + inv[:3, 3:4]
    np.testing.assert_allclose(stored_idx, np.rint(stored_idx), atol=1e-6)
    i, j, k = np.rint(stored_idx).astype(int)
    np.testing.assert_array_equal(x_returned.reshape(-1), x_stored[i, j, k])


def _data_root() -> Path:
    env = os.environ.get("MEDMAE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


# --- NIfTI -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(AFFINES))
def test_nifti_reoriented_to_ras_and_written_back_to_stored_geometry(tmp_path, code):
    data = _phantom()
    path = _save_nifti(tmp_path / f"{code}.nii.gz", data, AFFINES[code])
    x, meta = read_image(path)

    assert x.shape[0] == 1 and x.dtype == np.float32
    assert meta.orientation == "RAS" and meta.original_orientation == code
    np.testing.assert_allclose(meta.original_affine, AFFINES[code])
    assert meta.original_shape == data.shape and meta.spatial_dims == 3
    assert np.all(np.diag(meta.affine)[:3] > 0)
    _assert_voxels_line_up(x[0], meta.affine, data, AFFINES[code])
    assert sorted(meta.spacing) == sorted((1.5, 2.0, 2.5))

    out = write_like(x[0].astype(np.int32), meta, tmp_path / "pred" / "out.nii.gz")
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, AFFINES[code])
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), data)


def test_nifti_without_reorientation_keeps_stored_axes(tmp_path):
    data = _phantom()
    path = _save_nifti(tmp_path / "las.nii", data, AFFINES["LAS"])
    x, meta = read_image(path, reorient=False)
    np.testing.assert_array_equal(x[0], data)
    assert meta.orientation == "LAS"
    np.testing.assert_allclose(meta.affine, AFFINES["LAS"])


def test_nifti_scl_slope_inter_applied(tmp_path):
    raw = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(0.5, -100.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    x, meta = read_image(tmp_path / "scaled.nii.gz")
    np.testing.assert_allclose(x[0], raw * 0.5 - 100.0)
    assert meta.source_dtype == "int16"


def test_truncated_nifti_raises_naming_file(tmp_path):
    full = _save_nifti(tmp_path / "full.nii.gz", _phantom((20, 20, 20)), np.eye(4))
    blob = full.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ReadError) as info:
        read_image(cut)
    assert str(info.value).startswith(str(cut))


def test_text_file_named_nifti_raises(tmp_path):
    fake = tmp_path / "x.nii.gz"
    fake.write_text("patient list\n" * 20)
    with pytest.raises(ReadError, match="unreadable NIfTI") as info:
        read_image(fake)
    assert str(info.value).startswith(str(fake))


def test_4d_nifti_is_channels_and_expect_channels_checked(tmp_path):
    data = np.stack([_phantom(seed=s) for s in range(2)], axis=-1)  # (X, Y, Z, C)
    path = _save_nifti(tmp_path / "brats.nii.gz", data, np.eye(4))
    x, _ = read_image(path, expect_channels=2)
    assert x.shape == (2, 5, 6, 7)
    np.testing.assert_array_equal(x[1], data[..., 1])
    with pytest.raises(ReadError, match="expected 4 channel\\(s\\), got 2") as info:
        read_image(path, expect_channels=4)
    assert str(info.value).startswith(str(path))


def test_channel_files_are_stacked_in_order(tmp_path):
    a, b = _phantom(seed=1), _phantom(seed=2)
    pa = _save_nifti(tmp_path / "case_0000.nii.gz", a, AFFINES["LPS"])
    pb = _save_nifti(tmp_path / "case_0001.nii.gz", b, AFFINES["LPS"])
    x, meta = read_image([pa, pb])
    x_b, _ = read_image(pb)
    assert x.shape[0] == 2
    np.testing.assert_array_equal(x[1], x_b[0])
    assert meta.path == str(pa)


def test_channel_files_with_different_geometry_raise(tmp_path):
    pa = _save_nifti(tmp_path / "a.nii.gz", _phantom(), np.eye(4))
    pb = _save_nifti(tmp_path / "b.nii.gz", _phantom((5, 6, 8)), np.eye(4))
    pc = _save_nifti(tmp_path / "c.nii.gz", _phantom(), AFFINES["LAS"])
    with pytest.raises(ReadError, match="spatial shape") as info:
        read_image([pa, pb])
    assert str(info.value).startswith(str(pb))
    with pytest.raises(ReadError, match="affine differs") as info:
        read_image([pa, pc])
    assert str(info.value).startswith(str(pc))


def test_nan_voxels_are_readable_and_counted(tmp_path):
    data = _phantom()
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    x, _ = read_image(_save_nifti(tmp_path / "nan.nii.gz", data, np.eye(4)))
    assert nonfinite_count(x) == 4


# --- NRRD / MHA (SimpleITK, LPS world) -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_lps_itk_file_matches_ras_nifti_after_reorientation(tmp_path, suffix):
    data = _phantom()
    spacing = np.array([1.5, 2.0, 2.5])
    origin_ras = np.array([10.0, -20.0, 30.0])
    ras_affine = np.eye(4)
    ras_affine[:3, :3] = np.diag(spacing)
    ras_affine[:3, 3] = origin_ras
    nifti = _save_nifti(tmp_path / "ras.nii.gz", data, ras_affine)

    # Same physical image stored the ITK way: identity direction in LPS, so x and y run the other way.
    flipped = data[::-1, ::-1, :]
    img = sitk.GetImageFromArray(np.ascontiguousarray(flipped.transpose(2, 1, 0)))
    img.SetSpacing(tuple(spacing))
    n = np.array(data.shape)
    origin_lps = [-origin_ras[0] - spacing[0] * (n[0] - 1), -origin_ras[1] - spacing[1] * (n[1] - 1), origin_ras[2]]
    img.SetOrigin(origin_lps)
    itk_path = tmp_path / f"lps{suffix}"
    sitk.WriteImage(img, str(itk_path))

    x_nii, meta_nii = read_image(nifti)
    x_itk, meta_itk = read_image(itk_path)
    assert meta_itk.original_orientation == "LPS" and meta_itk.orientation == "RAS"
    np.testing.assert_array_equal(x_itk, x_nii)
    np.testing.assert_allclose(meta_itk.affine, meta_nii.affine, atol=1e-6)
    assert meta_itk.spacing == pytest.approx(tuple(spacing))

    out = write_like(x_itk[0], meta_itk, tmp_path / f"back{suffix}")
    back = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    assert back.GetOrigin() == pytest.approx(origin_lps)
    assert back.GetDirection() == pytest.approx(img.GetDirection())


def test_2d_itk_image_is_channel_first_hw(tmp_path):
    arr_hw = np.arange(12, dtype=np.int16).reshape(3, 4)
    img = sitk.GetImageFromArray(arr_hw)
    img.SetSpacing((0.5, 0.25))  # ITK order: (x = column, y = row)
    sitk.WriteImage(img, str(tmp_path / "slice.mha"))
    x, meta = read_image(tmp_path / "slice.mha")
    np.testing.assert_array_equal(x[0], arr_hw)
    assert meta.spatial_dims == 2 and meta.spacing == (0.25, 0.5) and meta.affine is None


# --- Pillow formats ------------------------------------------------------------------------------------------


def test_png_grey_8_and_16_bit_keep_values(tmp_path):
    grey8 = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    grey16 = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    x8, m8 = read_image(tmp_path / "g8.png")
    x16, m16 = read_image(tmp_path / "g16.png")
    assert x8.shape == (1, 4, 5) and x16.shape == (1, 4, 5)
    np.testing.assert_array_equal(x8[0], grey8)
    np.testing.assert_array_equal(x16[0], grey16)
    assert x16.max() == 57000.0
    assert (m8.source_dtype, m16.source_dtype) == ("uint8", "uint16")
    assert m8.spacing == (1.0, 1.0) and m8.spatial_dims == 2 and m8.affine is None


def test_png_rgb_rgba_and_grey_conversions(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")

    x, meta = read_image(tmp_path / "rgb.png")
    np.testing.assert_array_equal(x, rgb.transpose(2, 0, 1))
    assert meta.channel_names == ("R", "G", "B")
    x_rgba, _ = read_image(tmp_path / "rgba.png", expect_channels=3)
    np.testing.assert_array_equal(x_rgba, x)

    grey, grey_meta = read_image(tmp_path / "rgb.png", grey=True)
    pillow_luma = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    assert grey.shape == (1, 4, 5) and grey_meta.channel_names is None
    np.testing.assert_allclose(grey[0], pillow_luma, atol=1.0)

    with pytest.raises(ReadError, match="expected 1 channel\\(s\\), got 3"):
        read_image(tmp_path / "rgb.png", expect_channels=1)


def test_grey_false_makes_three_equal_channels(tmp_path):
    grey8 = np.arange(20, dtype=np.uint8).reshape(4, 5)
    Image.fromarray(grey8).save(tmp_path / "g.png")
    x, meta = read_image(tmp_path / "g.png", grey=False)
    assert x.shape == (3, 4, 5) and meta.channel_names == ("R", "G", "B")
    for channel in x:
        np.testing.assert_array_equal(channel, grey8)


def test_palette_images_grey_or_colour_and_label_indices(tmp_path):
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    grey_pal = Image.fromarray(idx, mode="P")
    grey_pal.putpalette([0, 0, 0, 100, 100, 100, 200, 200, 200])
    grey_pal.save(tmp_path / "grey_pal.png")
    colour_pal = Image.fromarray(idx, mode="P")
    colour_pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    colour_pal.save(tmp_path / "colour_pal.png")

    g, _ = read_image(tmp_path / "grey_pal.png")
    np.testing.assert_array_equal(g[0], idx * 100.0)
    c, _ = read_image(tmp_path / "colour_pal.png")
    assert c.shape == (3, 2, 3)
    np.testing.assert_array_equal(c[0], np.where(idx == 1, 255.0, 0.0))
    np.testing.assert_array_equal(c[2], np.where(idx == 2, 255.0, 0.0))
    y, _ = read_label(tmp_path / "colour_pal.png")
    np.testing.assert_array_equal(y, idx)


@pytest.mark.parametrize("suffix", [".tif", ".bmp", ".gif", ".jpg"])
def test_other_raster_formats_read_grey(tmp_path, suffix):
    grey8 = np.tile(np.arange(0, 240, 30, dtype=np.uint8), (8, 1))
    Image.fromarray(grey8).save(tmp_path / f"img{suffix}")
    x, _ = read_image(tmp_path / f"img{suffix}", grey=True)
    assert x.shape == (1, 8, 8)
    np.testing.assert_allclose(x[0], grey8, atol=0 if suffix != ".jpg" else 8)


def test_truncated_jpeg_raises_naming_file(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "ok.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((tmp_path / "ok.jpg").read_bytes()[:300])
    with pytest.raises(ReadError, match="unreadable image") as info:
        read_image(cut)
    assert str(info.value).startswith(str(cut))


def test_multi_frame_gif_raises(tmp_path):
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 128)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ReadError, match="2 frames"):
        read_image(tmp_path / "anim.gif")


# --- errors, suffixes ----------------------------------------------------------------------------------------


def test_missing_and_unknown_files_raise_naming_file(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(ReadError, match="file not found") as info:
        read_image(missing)
    assert str(info.value).startswith(str(missing))
    odd = tmp_path / "scan.xyz"
    odd.write_text("x")
    with pytest.raises(ReadError, match="unsupported file type '.xyz'") as info:
        read_image(odd)
    assert str(info.value).startswith(str(odd))


def test_is_image_file(tmp_path):
    _save_nifti(tmp_path / "a.nii.gz", _phantom(), np.eye(4))
    (tmp_path / "._a.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "noext").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 8)
    (tmp_path / "noext_plain").write_text("x" * 200)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "B.PNG")
    found = sorted(p.name for p in tmp_path.iterdir() if is_image_file(p))
    assert found == ["B.PNG", "a.nii.gz", "noext"]
    assert not is_image_file(tmp_path / "missing.nii.gz")


def test_a_real_file_with_colons_is_not_virtual(tmp_path):
    odd = tmp_path / "scan::1.png"
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(odd)
    assert split_virtual(odd) is None
    assert read_image(odd)[0].max() == 7


# --- labels --------------------------------------------------------------------------------------------------


def test_label_float_near_integers_rounded_and_reoriented(tmp_path):
    labels = np.random.default_rng(0).integers(0, 3, size=(5, 6, 7)).astype(np.float32)
    noisy = labels + np.where(labels == 2, -1e-4, 0.0).astype(np.float32)  # 2 stored as 1.9999
    path = _save_nifti(tmp_path / "lab.nii.gz", noisy, AFFINES["LPS"])
    y, meta = read_label(path)
    assert y.dtype == np.uint8 and y.shape == (5, 6, 7)
    _assert_voxels_line_up(y, meta.affine, labels.astype(np.uint8), AFFINES["LPS"])
    image, image_meta = read_image(path)
    np.testing.assert_allclose(meta.affine, image_meta.affine)


def test_label_non_integer_and_nan_raise(tmp_path):
    bad = np.zeros((3, 3, 3), np.float32)
    bad[1, 1, 1] = 2.5
    path = _save_nifti(tmp_path / "half.nii.gz", bad, np.eye(4))
    with pytest.raises(ReadError, match="non-integer") as info:
        read_label(path)
    assert str(info.value).startswith(str(path)) and "2.5" in str(info.value)
    bad[1, 1, 1] = np.nan
    path = _save_nifti(tmp_path / "nan.nii.gz", bad, np.eye(4))
    with pytest.raises(ReadError, match="NaN"):
        read_label(path)


def test_label_dtype_follows_value_range(tmp_path):
    neg = np.array([[[-1, 0], [5, 300]]], dtype=np.int32)
    y, meta = read_label(_save_nifti(tmp_path / "neg.nii.gz", neg, np.eye(4)))
    assert y.dtype == np.int16 and meta.source_dtype == "int32"
    np.testing.assert_array_equal(y, neg)


def test_label_png_modes(tmp_path):
    mask = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)
    Image.fromarray(mask).save(tmp_path / "bilevel.png")
    y, _ = read_label(tmp_path / "bilevel.png")
    np.testing.assert_array_equal(y, mask.astype(np.uint8))
    grey_as_rgb = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=-1)
    Image.fromarray(grey_as_rgb).save(tmp_path / "rgbmask.png")
    y, _ = read_label(tmp_path / "rgbmask.png")
    np.testing.assert_array_equal(y, mask * 255)
    grey_as_rgb[0, 0, 1] = 9
    Image.fromarray(grey_as_rgb).save(tmp_path / "colour.png")
    with pytest.raises(ReadError, match="needs 1 channel, got 3"):
        read_label(tmp_path / "colour.png")


# --- real data (skipped when ../shared/data or MEDMAE_DATA is absent) ----------------------------------------


@pytest.mark.realdata
def test_real_hippocampus_image_and_label():
    task = _data_root() / "hippocampus_msd" / "Task04_Hippocampus"
    image_path = task / "imagesTr" / "hippocampus_001.nii.gz"
    if not image_path.is_file():
        pytest.skip(f"real data not found at {task} (set MEDMAE_DATA)")
    x, meta = read_image(image_path, expect_channels=1)
    y, label_meta = read_label(task / "labelsTr" / "hippocampus_001.nii.gz")
    assert x.shape[1:] == y.shape
    assert all(25 <= s <= 70 for s in y.shape)
    assert set(np.unique(y).tolist()) == {0, 1, 2}
    assert meta.orientation == "RAS" and meta.spacing == pytest.approx((1.0, 1.0, 1.0), abs=0.1)
    np.testing.assert_allclose(label_meta.affine, meta.affine)
    assert np.isfinite(x).all() and x.std() > 0


@pytest.mark.realdata
def test_real_chest_xray_jpeg():
    folder = _data_root() / "chestxray_pneumonia_224" / "dataset" / "test" / "NORMAL"
    files = sorted(folder.glob("*.jpeg")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"real data not found at {folder} (set MEDMAE_DATA)")
    x, meta = read_image(files[0], grey=True, expect_channels=1)
    assert x.shape == (1, 224, 224) and meta.spatial_dims == 2
    assert 0.0 <= x.min() < x.max() <= 255.0
