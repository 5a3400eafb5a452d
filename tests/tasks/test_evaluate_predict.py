import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import flat, invoke

from medmae.config import ConfigError
from medmae.data.pipeline import resolve_spec
from medmae.data.readers import read_label
from medmae.data.synthetic import abdomen_ct, chest_xray
from medmae.engine.checkpoint import CheckpointError
from medmae.errors import SourceError
from medmae.metrics import EMPTY_MASK_POLICY
from medmae.report import find_summary
from medmae.tasks.evaluate import evaluate
from medmae.tasks.finetune import finetune, resolve_finetune_config
from medmae.tasks.predict import predict
from medmae.tasks.run_dir import eval_dir

TINY_MODEL = ("model.depth=2", "model.embed_dim=32", "model.num_heads=2")
CXR = (*TINY_MODEL, "data.synthetic.n=40", "data.synthetic.size=[32,32]", "model.img_size=[32,32]",
       "train.batch_size=4", "eval.bootstrap=200")
CT = (*TINY_MODEL, "data.synthetic.n=6", "data.synthetic.size=[40,40,32]", "model.img_size=[32,32,32]",
      "train.batch_size=2", "head.feature_size=4", "eval.test_fraction=0.5", "eval.bootstrap=200")
ABDOMEN = ["liver", "spleen", "kidney_right", "kidney_left", "aorta"]


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory) -> Path:
    return finetune(task="cls", preset="demo-2d", run_dir=tmp_path_factory.mktemp("cls") / "run", overrides=CXR,
                    max_steps=2)


@pytest.fixture(scope="module")
def seg3d_run(tmp_path_factory) -> Path:
    return finetune(task="seg", preset="demo-3d", run_dir=tmp_path_factory.mktemp("seg3d") / "run", overrides=CT,
                    max_steps=2)


def test_classification_summary(cls_run):
    summary = evaluate(cls_run)
    split = json.loads((cls_run / "splits.json").read_text())
    assert json.loads((cls_run / "eval" / "test" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["task"] == "cls" and summary["split"] == "test" and summary["n_cases"] == len(split["test"])
    rows = {(r["metric"], r.get("class")): r for r in summary["rows"]}
    per_class = [(m, c) for c in ("nodule", "opacity", "effusion") for m in ("auroc", "auprc")]
    assert set(rows) == {("macro_auroc", None), ("macro_auprc", None), ("accuracy", None), *per_class}
    for r in rows.values():
        assert r["ci_low"] <= r["value"] <= r["ci_high"], r
        assert 0.0 <= r["value"] <= 1.0 and r["ci_high"] > r["ci_low"] and r["n"] == len(split["test"])
    with (cls_run / "eval" / "test" / "per_case.csv").open() as f:
        per_case = list(csv.DictReader(f))
    assert sorted(r["case"] for r in per_case) == split["test"]
    assert all(r[f"target_{c}"] in ("0", "1") and 0 <= float(r[f"prob_{c}"]) <= 1
               for r in per_case for c in ("nodule", "opacity", "effusion"))


def test_segmentation_summary(seg3d_run):
    summary = evaluate(seg3d_run)
    split = json.loads((seg3d_run / "splits.json").read_text())
    n = len(split["test"])
    assert summary["task"] == "seg" and summary["n_cases"] == n >= 2
    assert summary["policy"] == asdict(EMPTY_MASK_POLICY)
    assert summary["regions"] == {name: [i + 1] for i, name in enumerate(ABDOMEN)}
    assert set(summary["counts"]) == set(ABDOMEN)
    rows = {(r["metric"], r["region"]): r for r in summary["rows"]}
    assert set(rows) == {(m, r) for m in ("dice", "hd95_mm", "precision", "recall") for r in [*ABDOMEN, "mean"]}
    for r in summary["rows"]:
        assert {"ci_low", "ci_high", "n", "n_excluded"} <= set(r)
        if r["n"] >= 2 and not math.isnan(r["ci_low"]):
            assert r["ci_low"] <= r["value"] <= r["ci_high"], r
    for region in ABDOMEN:
        dice = rows[("dice", region)]
        assert dice["n"] + dice["n_excluded"] == n and 0.0 <= dice["value"] <= 1.0
        assert rows[("hd95_mm", region)]["value"] > 0
    with (seg3d_run / "eval" / "test" / "per_case.csv").open() as f:
        per_case = list(csv.DictReader(f))
    assert len(per_case) == n * len(ABDOMEN)
    assert {r["case"] for r in per_case} == set(split["test"]) and {r["region"] for r in per_case} == set(ABDOMEN)


def test_evaluate_errors(cls_run, tmp_path):
    with pytest.raises(SourceError, match=r"splits\.json: no cases in split 'val'"):
        evaluate(cls_run, split="val")
    with pytest.raises(CheckpointError, match=f"{tmp_path}: not a fine-tuning run"):
        evaluate(tmp_path)


def test_evaluate_on_other_data(cls_run, tmp_path):
    spec = resolve_spec(resolve_finetune_config(cls_run / "config.yaml").data)
    rows = [(c.path, c.label, "train" if i < 12 else "test") for i, c in enumerate(spec.cases[:24])]
    manifest = tmp_path / "external.csv"
    manifest.write_text("path,label,split\n" + "".join(f"{p},{lab},{s}\n" for p, lab, s in rows))
    summary = evaluate(cls_run, data=manifest)
    assert summary["n_cases"] == 12 and summary["split"] == f"{manifest}:test"
    # a split the data does not have is an error, not a silent evaluation of every case (training ones too)
    with pytest.raises(SourceError, match=rf"{manifest}: no cases in split 'val' \(its splits: test, train\)"):
        evaluate(cls_run, data=manifest, split="val")


def test_predict_nifti_keeps_the_input_geometry(seg3d_run, tmp_path):
    """The same volume stored RAS and LPS gets the same labels in world space, each file in its own geometry."""
    vol = abdomen_ct(11, shape=(40, 36, 34), spacing=(1.2, 1.4, 2.5))
    ras = np.diag([1.2, 1.4, 2.5, 1.0])
    ras[:3, 3] = [-20.0, -30.0, 40.0]
    lps = ras @ np.array([[-1, 0, 0, 39], [0, -1, 0, 35], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    hu = np.rint(vol.image_cxyz[0]).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, ras), tmp_path / "ras.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu[::-1, ::-1]), lps), tmp_path / "lps.nii.gz")
    written = predict(seg3d_run, [tmp_path / "ras.nii.gz", tmp_path / "lps.nii.gz"], out=tmp_path / "out")
    assert [p.name for p in written] == ["ras_seg.nii.gz", "lps_seg.nii.gz"]
    masks = {}
    for name, affine in (("ras", ras), ("lps", lps)):
        img = nib.load(tmp_path / "out" / f"{name}_seg.nii.gz")
        np.testing.assert_allclose(img.affine, affine, atol=1e-5)
        assert img.shape == hu.shape and np.issubdtype(img.get_data_dtype(), np.integer)
        masks[name] = np.asanyarray(img.dataobj)
        assert set(np.unique(masks[name])) <= set(range(6))
    # an asymmetric prediction, so a file written without undoing the reorientation would differ
    assert not np.array_equal(masks["ras"], masks["ras"][::-1, ::-1])
    np.testing.assert_array_equal(masks["lps"][::-1, ::-1], masks["ras"])


def test_predict_refuses_inputs_that_would_overwrite_each_other(seg3d_run, tmp_path):
    inputs = [tmp_path / "a" / "img.nii.gz", tmp_path / "b" / "img.nii.gz"]
    with pytest.raises(ConfigError,
                       match=r"a/img\.nii\.gz, .*b/img\.nii\.gz would all be written to .*img_seg\.nii\.gz"):
        predict(seg3d_run, inputs, out=tmp_path / "out")


@pytest.fixture(scope="module")
def seg2d_run(tmp_path_factory) -> Path:
    """Segmentation of the synthetic radiographs, which are PNG files (no physical spacing)."""
    return finetune(task="seg", preset="demo-2d", run_dir=tmp_path_factory.mktemp("seg2d") / "run",
                    overrides=(*CXR, "data.synthetic.n=12", "head.feature_size=4"), max_steps=1)


def test_predict_png_has_the_input_size(seg2d_run, tmp_path):
    run = seg2d_run
    image = np.rint(chest_xray(5, size=48).image_chw[0, 4:44] * 255).astype(np.uint8)  # 40 rows x 48 columns
    Image.fromarray(image).save(tmp_path / "cxr.png")
    (out,) = predict(run, [tmp_path / "cxr.png"], out=tmp_path / "out")
    assert out == tmp_path / "out" / "cxr_seg.png"
    with Image.open(out) as mask:  # a palette PNG: the values are the labels, the palette makes them visible
        assert mask.size == (48, 40) and mask.mode == "P"
        labels = np.asarray(mask)
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert mask.getpalette()[:9] == [0, 0, 0, 31, 119, 180, 255, 127, 14]
    assert np.array_equal(read_label(out)[0], labels)  # medmae (and any tool) reads the labels back unchanged
    with Image.open(tmp_path / "out" / "cxr_overlay.png") as overlay:  # the mask on the image
        assert overlay.size == (48, 40) and overlay.mode == "RGB"
        rgb = np.asarray(overlay).astype(int)
    grey = rgb[labels == 0]
    assert np.array_equal(grey[:, 0], grey[:, 1]) and np.array_equal(grey[:, 1], grey[:, 2])  # background stays grey
    if (labels == 1).any():
        tinted = rgb[labels == 1]
        assert (tinted[:, 2] > tinted[:, 0]).all()  # label 1 is tinted blue


def test_predict_classification_csv_matches_evaluation(cls_run, tmp_path):
    evaluate(cls_run)
    with (cls_run / "eval" / "test" / "per_case.csv").open() as f:
        per_case = {r["case"]: r for r in csv.DictReader(f)}
    spec = resolve_spec(resolve_finetune_config(cls_run / "config.yaml").data)
    cases = [c for c in spec.cases if c.case_id in per_case][:3]
    (out,) = predict(cls_run, [c.path for c in cases], out=tmp_path)
    with out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "prob_nodule", "prob_opacity", "prob_effusion", "prediction"]
    assert [r[0] for r in rows[1:]] == [c.path for c in cases]
    for case, row in zip(cases, rows[1:]):
        probs = [float(v) for v in row[1:4]]
        expected = [float(per_case[case.case_id][f"prob_{c}"]) for c in ("nodule", "opacity", "effusion")]
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        assert row[4] == "|".join(c for c, p in zip(("nodule", "opacity", "effusion"), probs) if p >= 0.5)


def test_evaluation_split_without_a_positive_case_names_the_class(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for i, (label, split) in enumerate([("cat", "train"), ("dog", "train")] * 2 + [("cat", "test")] * 3):
        Image.fromarray(rng.integers(0, 255, (32, 32)).astype(np.uint8)).save(tmp_path / f"c{i}.png")
        rows.append(f"c{i}.png,{label},{split}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    overrides = (*TINY_MODEL, "model.size=null", "model.img_size=[32,32]", "model.patch_size=8", "train.batch_size=2")
    with pytest.raises(SourceError, match=r"class 'dog' has 0 positive and 3 negative cases"):
        run = finetune(task="cls", data=tmp_path, run_dir=tmp_path / "run", overrides=overrides, max_steps=1)
        evaluate(run)


# ------------------------------------------------------------------------------------- evaluation outputs


def external_manifest(run: Path, path: Path, splits: dict[str, range]) -> Path:
    """A manifest of some of the run's own synthetic cases with the given split names."""
    spec = resolve_spec(resolve_finetune_config(run / "config.yaml").data)
    rows = [(spec.cases[i].path, spec.cases[i].label, name) for name, idx in splits.items() for i in idx]
    path.write_text("path,label,split\n" + "".join(f"{p},{lab},{s}\n" for p, lab, s in rows))
    return path


def test_each_split_and_dataset_gets_its_own_eval_folder(cls_run, tmp_path):
    """val and test (and other data) no longer overwrite each other in RUN/eval/."""
    manifest = external_manifest(cls_run, tmp_path / "holdout.csv", {"val": range(0, 12), "test": range(12, 24)})
    own = evaluate(cls_run)
    val = evaluate(cls_run, data=manifest, split="val")
    test = evaluate(cls_run, data=manifest, split="test")
    written = {p.parent.name: json.loads(p.read_text()) for p in (cls_run / "eval").glob("*/summary.json")}
    assert {"test", "holdout_val", "holdout_test"} <= set(written)
    assert written["test"]["split"] == own["split"] == "test" and written["test"]["data"] is None
    assert written["holdout_val"]["split"] == f"{manifest}:val" and written["holdout_val"]["n_cases"] == val["n_cases"]
    assert written["holdout_test"]["split"] == f"{manifest}:test" and written["holdout_test"]["data"] == str(manifest)
    assert (cls_run / "eval" / "holdout_val" / "per_case.csv").is_file() and test["n_cases"] == 12
    assert not (cls_run / "eval" / "summary.json").exists()
    # another dataset with the same name does not overwrite the first one's folder
    (tmp_path / "other").mkdir()
    other = external_manifest(cls_run, tmp_path / "other" / "holdout.csv", {"test": range(24, 36)})
    evaluate(cls_run, data=other)
    assert json.loads((cls_run / "eval" / "holdout_test" / "summary.json").read_text())["data"] == str(manifest)
    assert [json.loads(p.read_text())["data"] for p in (cls_run / "eval").glob("holdout-*_test/summary.json")] == [str(other)]


def test_find_summary_reads_the_new_and_the_old_layout(tmp_path):
    assert eval_dir(tmp_path, "val") == tmp_path / "eval" / "val" != eval_dir(tmp_path, "test")
    assert eval_dir(tmp_path, "test", "/data/ext/dataset.json") == tmp_path / "eval" / "ext_test"
    assert find_summary(tmp_path) is None
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text(json.dumps({"split": "test", "rows": []}))
    assert find_summary(tmp_path) == tmp_path / "eval" / "summary.json"
    assert find_summary(tmp_path, "val") is None
    (tmp_path / "eval" / "test").mkdir()
    (tmp_path / "eval" / "test" / "summary.json").write_text(json.dumps({"split": "test", "rows": []}))
    assert find_summary(tmp_path) == tmp_path / "eval" / "test" / "summary.json"


def test_classification_summary_records_the_threshold_and_the_trivial_baseline(cls_run):
    summary = evaluate(cls_run)
    cfg = resolve_finetune_config(cls_run / "config.yaml")
    assert summary["threshold"] == cfg.eval.threshold == 0.5
    assert summary["decision_rule"] == "p >= 0.5 per label"
    with (cls_run / "eval" / "test" / "per_case.csv").open() as f:
        targets = np.array([[int(r[f"target_{c}"]) for c in ("nodule", "opacity", "effusion")] for r in csv.DictReader(f)])
    base = summary["accuracy_baseline"]
    assert base["rule"] == "all-negative per label" and base["value"] == pytest.approx(1 - targets.mean())
    accuracy = next(r["value"] for r in summary["rows"] if r["metric"] == "accuracy")
    assert base["accuracy"] == accuracy and base["beaten"] == (accuracy > base["value"])


def test_the_evaluate_table_shows_the_baseline_and_threads_are_set(cls_run):
    before = torch.get_num_threads()
    try:
        result = invoke(["evaluate", cls_run, "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    text = flat(result.output)
    assert "trivialbaseline(all-negativeperlabel)" in text and "decisions:p>=0.5perlabel" in text


def test_predict_sets_the_threads(cls_run, tmp_path):
    spec = resolve_spec(resolve_finetune_config(cls_run / "config.yaml").data)
    before = torch.get_num_threads()
    try:
        result = invoke(["predict", cls_run, spec.cases[0].path, "--out", tmp_path / "out", "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_hd95_of_png_images_is_in_pixels(seg2d_run):
    summary = evaluate(seg2d_run)
    metrics = {r["metric"] for r in summary["rows"]}
    assert metrics == {"dice", "precision", "recall", "hd95_px"} and summary["hd95_unit"] == "px"
    assert "hd95_px" in summary["policy"]["hd95_definition"]
    with (seg2d_run / "eval" / "test" / "per_case.csv").open() as f:
        header = next(csv.reader(f))
    assert "hd95_px" in header and "hd95_mm" not in header


def test_hd95_of_nifti_volumes_stays_in_mm(seg3d_run):
    summary = evaluate(seg3d_run)
    assert summary["hd95_unit"] == "mm" and "hd95_px" not in {r["metric"] for r in summary["rows"]}


def test_test_fraction_zero_trains_on_every_case_and_evaluate_asks_for_data(tmp_path):
    run = finetune(task="cls", preset="demo-2d", run_dir=tmp_path / "all", overrides=(*CXR, "eval.test_fraction=0"),
                   max_steps=1)
    split = json.loads((run / "splits.json").read_text())
    assert split["test"] == [] and len(split["train"]) == len(split["train_used"]) == 40
    assert split["origin"] == "none held out (eval.test_fraction=0)"
    with pytest.raises(ConfigError, match=r"has no held-out split .* evaluate it on other data with --data PATH"):
        evaluate(run)
    result = invoke(["evaluate", run])
    assert result.exit_code == 2 and "--dataPATH" in flat(result.output) and "Traceback" not in result.output
    manifest = external_manifest(run, tmp_path / "external.csv", {"test": range(0, 16)})
    assert evaluate(run, data=manifest)["n_cases"] == 16
