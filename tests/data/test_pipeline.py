"""Pools (per-source intensity, sampling weights), 2D slices of volumes, bad-case policy, anisotropic resampling."""

import json
from collections import Counter

import numpy as np
import pytest

from medmae.config import ConfigError, PretrainConfig, load_config
from medmae.data.dataset import CaseDataset, EpochBatchSampler
from medmae.data.pipeline import prepare_pool, resolve_parts
from medmae.data.preprocess import resample_to_spacing
from medmae.data.synthetic import write_dataset
from medmae.errors import CaseError
from medmae.models.contract import read_contract
from medmae.tasks.pretrain import pretrain


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    ct = write_dataset(root / "ct", "abdomen_ct", 4, seed=1, shape=(24, 24, 16))
    mr = write_dataset(root / "mr", "brain_mr", 2, seed=2, shape=(24, 24, 16))
    return ct, mr


def pool_config(ct, mr, **extra):
    raw = {
        "data": {"sources": [
            {"path": str(ct), "modality": "CT", "weight": 3.0, "intensity": {"name": "ct_window", "lo": -175, "hi": 250}},
            {"path": str(mr), "modality": "MR", "weight": 1.0, "intensity": {"name": "mri_zscore_nonzero"}},
        ], **extra},
        "model": {"spatial_dims": 3, "img_size": [16, 16, 16], "patch_size": 16, "size": None, "embed_dim": 32,
                  "depth": 1, "num_heads": 2},
    }
    return load_config(PretrainConfig, raw)


def test_pool_uses_each_sources_intensity_and_tags_modality(two_sources):
    cfg = pool_config(*two_sources)
    parts = resolve_parts(cfg.data, cfg.model)
    assert [p.prep.intensity["name"] for p in parts] == ["ct_window", "mri_zscore_nonzero"]
    pool = prepare_pool(parts, cfg.data)
    by_mod = {m: [p for p in pool.prepared if p.case.modality == m] for m in ("CT", "MR")}
    assert len(by_mod["CT"]) == 4 and len(by_mod["MR"]) == 2
    ct_vals = np.concatenate([np.asarray(p.image).ravel() for p in by_mod["CT"]])
    assert ct_vals.min() >= 0.0 and ct_vals.max() <= 1.0  # windowed to [0, 1]
    mr = np.asarray(by_mod["MR"][0].image)[0]
    assert abs(mr[mr != 0].mean()) < 1e-3  # z-scored over the non-zero voxels
    assert pool.composition["sources"] == {str(two_sources[0]): 4, str(two_sources[1]): 2}
    assert pool.weights is None  # uniform sampling by default


@pytest.mark.parametrize("sampling,extra,expected_ct_share", [
    ("source", {}, 0.75),
    ("modality", {"modality_weights": {"CT": 1.0, "MR": 1.0}}, 0.5),
])
def test_pool_sampling_weights_give_each_source_its_share(two_sources, sampling, extra, expected_ct_share):
    cfg = pool_config(*two_sources, sampling=sampling, **extra)
    pool = prepare_pool(resolve_parts(cfg.data, cfg.model), cfg.data)
    is_ct = np.array([p.case.modality == "CT" for p in pool.prepared])
    draws = Counter()
    for epoch in range(400):
        for batch in EpochBatchSampler(len(pool.prepared), 2, seed=0, epoch=epoch, weights=pool.weights):
            draws.update(i for _, i in batch)
    share = sum(v for i, v in draws.items() if is_ct[i]) / sum(draws.values())
    assert share == pytest.approx(expected_ct_share, abs=0.04)


def test_unknown_modality_weight_is_an_error(two_sources):
    cfg = pool_config(*two_sources, sampling="modality", modality_weights={"PET": 1.0})
    with pytest.raises(ConfigError, match="PET"):
        prepare_pool(resolve_parts(cfg.data, cfg.model), cfg.data)


def test_2d_model_trains_on_slices_of_volumes(two_sources, tmp_path):
    ct, _ = two_sources
    raw = {"data": {"path": str(ct), "slice_axis": 2, "intensity": {"name": "ct_window"}},
           "model": {"spatial_dims": 2, "img_size": [16, 16], "patch_size": 8, "size": None, "embed_dim": 32,
                     "depth": 1, "num_heads": 2}}
    cfg = load_config(PretrainConfig, raw)
    pool = prepare_pool(resolve_parts(cfg.data, cfg.model), cfg.data)
    assert np.asarray(pool.prepared[0].image).ndim == 4  # the cached volume stays 3D
    ds = CaseDataset(pool.prepared, (16, 16), augment=None, seed=0, slice_axis=2)
    assert ds[0]["image"].shape == (1, 16, 16)
    # without slice_axis a volume for a 2D model is an error that says what to do
    cfg.data.slice_axis = None
    with pytest.raises(CaseError, match="slice_axis"):
        prepare_pool(resolve_parts(cfg.data, cfg.model), cfg.data)
    run = pretrain({**raw, "train": {"batch_size": 2, "epochs": 1}, "model": {**raw["model"], "decoder":
                    {"embed_dim": 16, "depth": 1, "num_heads": 2}}}, run_dir=tmp_path / "R", max_steps=2)
    contract = read_contract(run / "export" / "encoder.safetensors")
    assert contract["preprocessing"]["slice_axis"] == 2 and contract["encoder"]["spatial_dims"] == 2


def test_on_bad_case_skip_records_and_limits(tmp_path, two_sources):
    ct, _ = two_sources
    folder = tmp_path / "data"
    folder.mkdir()
    for f in sorted(ct.parent.joinpath("imagesTr").glob("*.nii.gz")):
        folder.joinpath(f.name).write_bytes(f.read_bytes())
    broken = folder / "broken.nii.gz"
    broken.write_bytes((folder / "case_0000.nii.gz").read_bytes()[:200])
    raw = {"data": {"path": str(folder), "intensity": {"name": "ct_window"}, "on_bad_case": "skip",
                    "max_bad_fraction": 0.3},
           "model": {"spatial_dims": 3, "img_size": [16, 16, 16], "patch_size": 16, "size": None, "embed_dim": 32,
                     "depth": 1, "num_heads": 2, "decoder": {"embed_dim": 16, "depth": 1, "num_heads": 2}},
           "train": {"batch_size": 2}}
    run = pretrain(raw, run_dir=tmp_path / "R", max_steps=1)
    bad = [json.loads(line) for line in (run / "bad_cases.jsonl").read_text().splitlines()]
    assert [b["case_id"] for b in bad] == ["broken"] and "broken.nii.gz" in bad[0]["error"]
    assert len(json.loads((run / "pretrain_cases.json").read_text())["cases"]) == 4
    raw["data"]["max_bad_fraction"] = 0.1  # 1 of 5 is too many now
    with pytest.raises(CaseError, match="1 of 5"):
        pretrain(raw, run_dir=tmp_path / "R2", max_steps=1)
    raw["data"]["on_bad_case"] = "raise"
    with pytest.raises(CaseError, match="broken.nii.gz"):
        pretrain(raw, run_dir=tmp_path / "R3", max_steps=1)


def test_thick_slices_resample_cubic_in_plane_and_nearest_across():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 8, 8, 4)).astype(np.float32)
    out = resample_to_spacing(x, (1.0, 1.0, 5.0), (1.0, 1.0, 2.5))  # 5:1 anisotropy -> separate-slice rule
    assert out.shape == (1, 8, 8, 8)
    for z in range(8):  # every output slice is one of the input slices (in-plane grid unchanged)
        assert any(np.allclose(out[0, :, :, z], x[0, :, :, k], atol=1e-5) for k in range(4))
    iso = resample_to_spacing(x, (1.0, 1.0, 2.0), (1.0, 1.0, 1.0))  # 2:1 -> trilinear: slices are blends
    assert not all(any(np.allclose(iso[0, :, :, z], x[0, :, :, k], atol=1e-5) for k in range(4)) for z in range(8))
