"""The plan file (``medmae plan --out plan.yaml``): writing it, reading it back, the configs it holds, and the
summary a run records of it (``task.json``, the export contract, ``summary.json``).

A plan file is preset-shaped: the pretraining config at the top level, the fine-tuning settings under
``finetune`` (common keys and ``seg`` / ``cls``), and the reasons under ``plan``. It is saved verbatim as
``plan.yaml`` in every run directory made from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medmae.config import (
    ConfigError,
    FinetuneConfig,
    PretrainConfig,
    apply_overrides,
    finetune_raw_from_mapping,
    validate,
)

PLAN_KEY = "plan"
HEADER = ("# medmae plan: made from the dataset fingerprint by `medmae plan` (docs/howto/plan-and-budget.md).\n"
          "# Top level: the pretraining config (`medmae pretrain --plan THIS`); `finetune`: the fine-tuning settings\n"
          "# (`medmae finetune|sweep --plan THIS --task T`); `plan`: what was decided and why.\n")


@dataclass(frozen=True)
class PlanFile:
    path: str
    text: str
    raw: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return self.raw.get(PLAN_KEY) or {}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def pretrain_raw(self) -> dict[str, Any]:
        return {k: v for k, v in self.raw.items() if k != PLAN_KEY}

    def finetune_raw(self, task: str) -> dict[str, Any]:
        return finetune_raw_from_mapping(self.pretrain_raw(), task, self.raw.get("name", "plan"), f"plan {self.path}")

    def summary(self) -> dict[str, Any]:
        """What a run records of the plan it was made from."""
        m = self.meta
        d = m.get("decisions", {})
        return {"file": self.path, "sha256": self.sha256, "source": m.get("source"), "task": m.get("task"),
                "family": m.get("family"), "device": m.get("device"), "budget_minutes": m.get("budget_minutes"),
                "spacing": (d.get("spacing") or {}).get("value"), "crop": (d.get("crop") or {}).get("value"),
                "network": d.get("network"), "batch": d.get("batch"), "predicted_step_s": d.get("predicted_step_s")}


class _NoAliases(yaml.SafeDumper):
    """Repeated lists are written out again, not as ``&id001`` anchors: a plan is read and edited by people."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_plan(plan: dict[str, Any]) -> str:
    """The plan file's text: a header comment, then the mapping (``plan`` last)."""
    ordered = {k: v for k, v in plan.items() if k != PLAN_KEY}
    ordered[PLAN_KEY] = plan[PLAN_KEY]
    return HEADER + yaml.dump(ordered, Dumper=_NoAliases, sort_keys=False, default_flow_style=None, width=120)


def write_plan(path: str | Path, plan: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_plan(plan))
    return path


def read_plan(path: str | Path) -> PlanFile:
    """A plan file; one that is missing, not YAML or has no ``plan`` section is a config error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--plan {path}: no such plan file (make one with `medmae plan SOURCE --task T --out {path}`)")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or PLAN_KEY not in raw:
        raise ConfigError(f"{path}: not a medmae plan (no `{PLAN_KEY}:` section); pass a config as CONFIG instead")
    return PlanFile(str(path), text, raw)


def plan_configs(plan: PlanFile, tasks: tuple[str, ...] = ("seg", "cls")) -> dict[str, Any]:
    """The validated configs of a plan: ``pretrain`` and one per task it has settings for (errors name the file)."""
    out: dict[str, Any] = {"pretrain": validate(PretrainConfig, plan.pretrain_raw(), f"plan {plan.path}")}
    for task in tasks:
        if task in (plan.raw.get("finetune") or {}):
            out[task] = validate(FinetuneConfig, plan.finetune_raw(task), f"plan {plan.path}, finetune.{task}")
    return out


def finetune_config_from_plan(plan: PlanFile, task: str, overrides: list[str]) -> FinetuneConfig:
    return validate(FinetuneConfig, apply_overrides(plan.finetune_raw(task), overrides), f"plan {plan.path}")


def pretrain_config_from_plan(plan: PlanFile, overrides: list[str]) -> PretrainConfig:
    return validate(PretrainConfig, apply_overrides(plan.pretrain_raw(), overrides), f"plan {plan.path}")
