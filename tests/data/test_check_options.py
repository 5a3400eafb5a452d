"""First-try friction with masks: 0/255 masks get a data.label_map hint; data.labels declares label names
without a dataset.json (data check and fine-tuning)."""

from __future__ import annotations

import json

import numpy as np

from data_factory import noise_png, png
from helpers import TINY_MODEL, invoke


def seg_folder(root, values=(0, 255), n: int = 6, dataset_json: dict | None = None):
    """``n`` noise images with masks holding ``values`` (bands of columns), manifest with the last one in test."""
    rows = []
    for i in range(n):
        noise_png(root / f"img{i}.png", size=32, seed=i)
        mask = np.zeros((32, 32), np.uint8)
        for k, v in enumerate(values):  # one band of columns per value
            mask[:, k * 32 // len(values):] = v
        png(root / f"msk{i}.png", mask)
        rows.append(f"img{i}.png,msk{i}.png,{'test' if i == n - 1 else 'train'}")
    (root / "manifest.csv").write_text("path,mask,split\n" + "\n".join(rows) + "\n")
    if dataset_json is not None:
        (root / "dataset.json").write_text(json.dumps(dataset_json))
    return root


def lines(output: str, code: str) -> list[str]:
    return [line for line in output.splitlines() if f"[{code}]" in line]


def test_data_check_suggests_a_label_map_for_0_255_masks(tmp_path):
    root = seg_folder(tmp_path / "d")
    result = invoke(["data", "check", str(root)])
    assert result.exit_code == 0, result.output[-2000:]
    hint = lines(result.output, "mask_0_255")
    assert len(hint) == 1 and "6 of 6 masks" in hint[0] and "--set 'data.label_map={255: 1}'" in hint[0]
    mapped = invoke(["data", "check", str(root), "--set", "data.label_map={255: 1}"])
    assert mapped.exit_code == 0 and not lines(mapped.output, "mask_0_255")


def test_declared_labels_and_0_255_masks_are_an_error_with_the_hint_and_the_label_map_fixes_it(tmp_path):
    root = seg_folder(tmp_path / "d", dataset_json={"labels": {"0": "background", "1": "lesion"}})
    result = invoke(["data", "check", str(root)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = lines(result.output, "undeclared_label")[0]
    assert "msk0.png" in error and "[255]" in error and "data.label_map={255: 1}" in error
    assert invoke(["data", "check", str(root), "--set", "data.label_map={255: 1}"]).exit_code == 0


def test_data_labels_declares_labels_for_data_check(tmp_path):
    root = seg_folder(tmp_path / "d", values=(0, 1, 2))
    result = invoke(["data", "check", str(root), "--set", "data.labels={1: lesion}", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output[-2000:]
    assert "[2] not declared (declared: [0, 1])" in lines(result.output, "undeclared_label")[0], "0 is background"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["labels"]["declared"] == {"0": "background", "1": "lesion"}


def test_finetuning_segmentation_with_data_labels_needs_no_dataset_json(tmp_path):
    root = seg_folder(tmp_path / "d", values=(0, 1))
    overrides = (*TINY_MODEL, "model.size=null", "model.img_size=[32,32]", "model.patch_size=8", "train.batch_size=2",
                 "data.labels={1: lesion}")
    args = ["finetune", "--task", "seg", "--data", str(root), "--run-dir", str(tmp_path / "run"), "--max-steps", "1"]
    result = invoke(args + [a for o in overrides for a in ("--set", o)])
    assert result.exit_code == 0, result.output[-2000:]
    task = json.loads((tmp_path / "run" / "task.json").read_text())
    assert task["label_names"] == {"0": "background", "1": "lesion"} and task["num_outputs"] == 2
