"""What a fine-tuning run starts from (its arm): ``scratch``, a MONAI ``baseline:NAME``, or a pretrained encoder;
whether that pretraining learned anything; and the optimiser settings each arm gets.

Layer-wise lr decay belongs to the MAE fine-tuning recipe: it gives the pretrained early layers a small lr. A
network trained from scratch has nothing to preserve there (with decay 0.75 over 12 blocks the patch embedding
would get ~2 % of the lr), so scratch and baseline arms never apply it, and ``task.json`` says so.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from medmae.config import FinetuneConfig
from medmae.errors import MedmaeError
from medmae.models.contract import read_contract
from medmae.models.monai_nets import describe, is_baseline
from medmae.run_layout import EXPORT_DIR, SUMMARY_FILE, export_path

log = logging.getLogger(__name__)

SCRATCH, BASELINE, PRETRAINED = "scratch", "baseline", "pretrained"


def arm_kind(init: str | Path | None) -> str:
    if init in (None, "scratch"):
        return SCRATCH
    return BASELINE if is_baseline(str(init)) else PRETRAINED


def layer_decay(cfg: FinetuneConfig, kind: str) -> tuple[float | None, dict[str, Any]]:
    """The layer decay to apply and what ``task.json`` records: only pretrained encoders get ``optim.layer_decay``."""
    configured = cfg.optim.layer_decay
    if kind == PRETRAINED or configured is None:
        return configured, {"configured": configured, "applied": configured is not None}
    log.info("optim.layer_decay=%g is not applied: a %s arm has no pretrained layers to preserve "
             "(it would give the first layers a fraction of the lr)", configured, kind)
    return None, {"configured": configured, "applied": False,
                  "why": f"{kind} arm: layer-wise lr decay is for pretrained encoders only"}


def _run_and_export(init: Path) -> tuple[Path | None, Path | None]:
    """(pretraining run dir, encoder export) that ``--init`` names, as far as they exist."""
    if init.is_dir():
        return init, export_path(init)
    run = init.parent.parent if init.parent.name == EXPORT_DIR else None
    return run, init


def learned(init: str | Path | None) -> dict[str, Any] | None:
    """Did the pretraining behind ``init`` beat the patch-mean baseline? From the export's contract (pretraining
    info), else the run's ``summary.json``; None for scratch, baselines and foreign checkpoints."""
    if arm_kind(init) != PRETRAINED:
        return None
    run, export = _run_and_export(Path(str(init)))
    info: dict[str, Any] = {}
    if export is not None and export.suffix == ".safetensors" and export.is_file():
        try:
            info = read_contract(export).get("pretraining") or {}
        except MedmaeError:
            info = {}
    if "learned" not in info and run is not None and (run / SUMMARY_FILE).is_file():
        s = json.loads((run / SUMMARY_FILE).read_text())
        info = {"masked_loss": s.get("figure_cases_masked_loss"),
                "patch_mean_baseline": s.get("figure_cases_patch_mean_baseline")}
        info["learned"] = s.get("learned", beats(info["masked_loss"], info["patch_mean_baseline"]))
    if info.get("learned") is None:
        return None
    return {"learned": bool(info["learned"]), "masked_loss": info.get("masked_loss"),
            "patch_mean_baseline": info.get("patch_mean_baseline"), "source": str(export or run)}


def beats(masked_loss: float | None, baseline: float | None) -> bool | None:
    """True when the final masked loss is below the patch-mean baseline; None when either is unknown."""
    if masked_loss is None or baseline is None or not (math.isfinite(masked_loss) and math.isfinite(baseline)):
        return None
    return masked_loss < baseline


def arm_record(cfg: FinetuneConfig, init: str | Path | None) -> tuple[float | None, dict[str, Any]]:
    """The layer decay to apply and the ``task.json`` keys of the arm: its kind, the baseline network, whether
    its pretraining learned (a warning when not), and the layer-decay decision."""
    kind = arm_kind(init)
    decay, decay_record = layer_decay(cfg, kind)
    record: dict[str, Any] = {"arm": kind, "layer_decay": decay_record}
    if kind == BASELINE:
        record["baseline"] = describe(str(init), cfg)
    check = learned(init)
    if check is not None:
        record["init_pretraining"] = check
        if not check["learned"]:
            log.warning("the pretraining behind --init %s did not learn: its masked loss %.4g does not beat the "
                        "patch-mean baseline %.4g; this fine-tuning starts from an encoder that learned nothing "
                        "useful", init, check["masked_loss"], check["patch_mean_baseline"])
    return decay, record


def add_to_task_json(path: Path, **items: Any) -> None:
    """Add keys to a run's ``task.json`` (what training measured, once it ends)."""
    data = json.loads(path.read_text())
    data.update(items)
    path.write_text(json.dumps(data, indent=1))
