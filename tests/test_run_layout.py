"""The names of run-directory files are spelled once (medmae.run_layout, the sweep's in medmae.report) and
docs/reference/run-dir.md describes every one of them."""

from __future__ import annotations

from pathlib import Path

import medmae.report as report
import medmae.run_layout as layout

DOC = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "run-dir.md").read_text()


def names(module) -> dict[str, str]:
    return {k: v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)}


def test_every_run_directory_name_is_in_the_reference():
    assert len(names(layout)) >= 10
    missing = {k: v for k, v in names(layout).items() if f"{v}" not in DOC}
    assert not missing, f"names in medmae/run_layout.py that docs/reference/run-dir.md does not mention: {missing}"


def test_every_sweep_directory_name_is_in_the_sweeps_section():
    sweeps = DOC.split("\n## Sweeps", 1)[1]
    own = {k: v for k, v in names(report).items() if k not in names(layout)}
    assert {"SWEEP_FILE", "RESULTS_CSV", "CELLS_DIR"} <= set(own)
    missing = {k: v for k, v in own.items() if f"W/{v}" not in sweeps}
    assert not missing, f"names in medmae.report missing from the Sweeps section of run-dir.md: {missing}"


def test_paths_are_the_documented_ones(tmp_path):
    assert layout.export_path("R") == Path("R/export/encoder.safetensors")
    assert layout.export_path("R", "decoder") == Path("R/export/decoder.safetensors")
    assert layout.eval_split_dir("R", "test") == Path("R/eval/test")
    assert layout.checkpoints_dir("R") == Path("R/checkpoints")
    for path in ("R/export/encoder.safetensors", "export/decoder.safetensors", "R/eval/<split>/summary.json",
                 "R/checkpoints/", "R/pretrain_cases.json", "R/bad_cases.jsonl"):
        assert path in DOC
