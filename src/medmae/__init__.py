"""medmae: masked-autoencoder self-supervision for 2D and 3D medical images.

Every CLI verb is a function here with the same arguments, e.g.
``medmae.pretrain(preset="demo-3d", run_dir="R", max_steps=3)`` returns the run directory; the model API is
``medmae.load_encoder(path)`` and ``medmae.load_task_model(run)``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from medmae.version import __version__

_VERBS = {
    "plan": "medmae.tasks.plan",
    "pretrain": "medmae.tasks.pretrain",
    "finetune": "medmae.tasks.finetune",
    "evaluate": "medmae.tasks.evaluate",
    "predict": "medmae.tasks.predict",
    "reconstruct": "medmae.tasks.reconstruct",
    "demo": "medmae.tasks.demo",
    "sweep": "medmae.tasks.sweep",
    "export": "medmae.tasks.export",
    "embed": "medmae.tasks.embed",
    "probe": "medmae.tasks.probe",
}
_API = {"load_encoder": "medmae.tasks.model_api", "load_task_model": "medmae.tasks.model_api"}

__all__ = ["__version__", *_VERBS, *_API, "write_report"]


def __getattr__(name: str) -> Any:
    """Import a verb on first use, so ``import medmae`` stays light."""
    if name in _VERBS:
        return getattr(import_module(_VERBS[name]), name)
    if name in _API:
        return getattr(import_module(_API[name]), name)
    if name == "write_report":
        return import_module("medmae.report").write_report
    raise AttributeError(f"module 'medmae' has no attribute {name!r}")
