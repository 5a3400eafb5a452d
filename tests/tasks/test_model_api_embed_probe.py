"""The model API (load_encoder, load_task_model), medmae embed and medmae probe on synthetic data, and the export
acceptance path on real (tiny) runs: pretraining run -> monai-vit / timm, fine-tuning run -> torchscript."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_2D, invoke

import medmae
from medmae.errors import ConfigError, SourceError
from medmae.tasks.finetune import finetune
from medmae.tasks.pretrain import pretrain
from medmae.tasks.predict import predict

CXR = ("model.depth=2", "model.embed_dim=32", "model.num_heads=2", "data.synthetic.n=24",
       "data.synthetic.size=[32,32]", "model.img_size=[32,32]", "train.batch_size=4", "eval.bootstrap=50")


def bright_dark(root: Path, n_train: int = 8, n_test: int = 4, splits: bool = True) -> Path:
    """Noise PNGs of two classes that differ in brightness, under train/ and test/ folders when ``splits``."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, base in (("dark", 40), ("bright", 180)):
            folder = root / (split if splits else "") / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(base + rng.normal(0, 30, (32, 32)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{label}_{i}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    mae = pretrain(preset="demo-2d", run_dir=root / "mae", overrides=TINY_2D, max_steps=1)
    cls = finetune(task="cls", preset="demo-2d", init=str(mae), run_dir=root / "cls", overrides=CXR, max_steps=1)
    return mae, cls, bright_dark(root / "data")


def test_load_encoder_embeds_a_file_and_the_same_pixels_as_an_array(runs):
    mae, _, data = runs
    enc = medmae.load_encoder(mae)
    png = next((data / "test" / "bright").glob("*.png"))
    x = enc.preprocess(png)
    assert x.shape == (1, 1, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0  # minmax intensity
    same = enc.preprocess(np.asarray(Image.open(png), dtype=np.float32))
    assert torch.allclose(x, same, atol=1e-6)
    assert enc.embed(x).shape == (1, 32)
    assert enc.contract["arch"] == "vit" and enc.contract["preprocessing"]["intensity"]["name"] == "minmax"


def test_load_task_model_predicts_what_medmae_predict_writes(runs, tmp_path):
    _, cls, data = runs
    task = medmae.load_task_model(cls)
    png = next((data / "test" / "dark").glob("*.png"))
    with torch.no_grad():
        probs = torch.sigmoid(task.model(task.preprocess(png)))[0] if task.labels["multilabel"] else \
            torch.softmax(task.model(task.preprocess(png)), 1)[0]
    (csv_path,) = predict(cls, [png], out=tmp_path / "pred", device="cpu")
    row = next(csv.DictReader(csv_path.open()))
    assert [float(row[f"prob_{c}"]) for c in task.labels["classes"]] == pytest.approx(probs.tolist(), abs=1e-5)


def test_embed_writes_one_row_per_case_in_the_csv_order(runs, tmp_path):
    mae, _, data = runs
    result = invoke(["embed", mae, data, "--out", tmp_path / "e" / "emb.npy"])
    assert result.exit_code == 0, result.output
    feats = np.load(tmp_path / "e" / "emb.npy")
    rows = list(csv.DictReader((tmp_path / "e" / "emb.csv").open()))
    assert feats.shape == (24, 32) and len(rows) == 24 and rows[0]["split"] in ("train", "test")
    enc = medmae.load_encoder(mae)
    i = 5
    expected = enc.embed(enc.preprocess(rows[i]["path"]))[0].numpy()
    assert np.allclose(feats[i], expected, atol=1e-5)
    if (tmp_path / "e" / "emb.parquet").exists():
        pq = pytest.importorskip("pyarrow.parquet")
        table = pq.read_table(tmp_path / "e" / "emb.parquet")
        assert table.column("case_id").to_pylist() == [r["case_id"] for r in rows]
        assert np.allclose(np.asarray(table.column("embedding").to_pylist()[i]), feats[i])


def test_probe_separates_brightness_with_the_datasets_own_split(runs, tmp_path):
    mae, _, data = runs
    result = invoke(["probe", mae, "--data", data, "--k", "3", "--bootstrap", "50", "--out", tmp_path / "p.json"])
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "p.json").read_text())
    assert s["split"] == "dataset" and (s["n_train"], s["n_test"]) == (16, 8) and s["embedding_dim"] == 32
    for probe in ("knn", "logistic"):
        auc = next(r for r in s[probe] if r["metric"] == "auroc")
        assert auc["value"] >= 0.9 and auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    assert "knn" in result.output and "logistic" in result.output


def test_probe_without_a_split_draws_a_seeded_stratified_one(runs, tmp_path):
    mae, _, _ = runs
    data = bright_dark(tmp_path / "flat", n_train=5, n_test=0, splits=False)
    a = medmae.probe(mae, data=data, k=3, bootstrap=20, test_fraction=0.4, seed=1)
    b = medmae.probe(mae, data=data, k=3, bootstrap=20, test_fraction=0.4, seed=1)
    assert a["split"] == "stratified, seed 1" and a["n_test"] == 4 and a["n_train"] == 6
    assert a["knn"] == b["knn"] and a["logistic"] == b["logistic"]
    with pytest.raises(ConfigError, match="--test-fraction"):
        medmae.probe(mae, data=data, test_fraction=1.5)


def test_probe_and_embed_refuse_unlabelled_data_and_a_folder_as_out(runs, tmp_path):
    mae, _, data = runs
    unlabelled = tmp_path / "u"
    unlabelled.mkdir()
    for f in list((data / "train" / "dark").glob("*.png"))[:3]:
        (unlabelled / f.name).write_bytes(f.read_bytes())
    with pytest.raises(SourceError, match="no class labels"):
        medmae.probe(mae, data=unlabelled)
    with pytest.raises(ConfigError, match="is a folder"):
        medmae.embed(mae, data, out=tmp_path)


def test_export_acceptance_path_on_runs(runs, tmp_path):
    mae, cls, _ = runs
    for fmt in ("monai-vit", "timm"):
        result = invoke(["export", mae, "--to", fmt, "--out", tmp_path / fmt])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / fmt / "report.json").read_text())
        assert report["strict"] or report["skipped"], report
        assert report["source"] == str(mae / "export" / "encoder.safetensors")
    result = invoke(["export", cls, "--to", "torchscript", "--out", tmp_path / "ts"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ts" / "report.json").read_text())["equivalent"] is True
    assert medmae.export(cls, to="monai-vit", out=tmp_path / "cls-vit").strict  # the fine-tuned encoder
    refused = invoke(["export", mae, "--to", "onnx", "--out", tmp_path / "onnx"])
    assert refused.exit_code == 2 and "fine-tuning run directory" in refused.output


def test_probe_classifiers_give_one_column_per_class_also_for_classes_missing_from_training():
    from medmae.tasks.probe import knn_probs, logistic_probs

    train_f = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    test_f = np.array([[1.0, 0.05], [0.05, 1.0]])
    y = np.array([0, 0, 2, 2])  # class 1 has no training case
    for probs in (knn_probs(train_f, y, test_f, 2, 3), logistic_probs(train_f, y, test_f, False, 0, 3)):
        assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1) and (probs[:, 1] == 0).all()
        assert probs[0].argmax() == 0 and probs[1].argmax() == 2
    multi = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], np.float32)  # multi-label, one column per finding
    knn = knn_probs(train_f, multi, test_f, 2, 2)
    assert knn.tolist() == [[1.0, 0.0], [0.0, 0.5]]
    assert logistic_probs(train_f, multi, test_f, True, 0, 2).shape == (2, 2)
