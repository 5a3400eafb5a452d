"""medmae: masked-autoencoder self-supervision for 2D and 3D medical images.

Every CLI verb is a function here with the same arguments, e.g.
``medmae.pretrain(preset="demo-3d", run_dir="R", max_steps=3)`` returns the run directory; the model API is
``medmae.load_encoder(path)`` and ``medmae.load_task_model(run)``.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import Any

from medmae.version import __version__

_VERBS = {
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
_PACKAGE_VERBS = ("export",)  # a verb that shares its name with a package: medmae.export is both

__all__ = ["__version__", *_VERBS, *_API, "write_report"]


class _CallableModule(ModuleType):
    """The package ``medmae.<verb>`` that is also the verb: ``medmae.export(...)`` calls ``tasks.export.export``,
    ``medmae.export.FORMATS`` is the package's."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self.__name__.rpartition(".")[2]
        return getattr(import_module(_VERBS[name]), name)(*args, **kwargs)


class _Package(ModuleType):
    """``medmae`` itself: a package verb's module becomes callable when the import system attaches it here."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PACKAGE_VERBS and isinstance(value, ModuleType) and value.__name__ == f"{__name__}.{name}":
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """Import a verb on first use, so ``import medmae`` stays light."""
    if name in _PACKAGE_VERBS:
        return import_module(f"{__name__}.{name}")
    if name in _VERBS:
        return getattr(import_module(_VERBS[name]), name)
    if name in _API:
        return getattr(import_module(_API[name]), name)
    if name == "write_report":
        return import_module("medmae.report").write_report
    raise AttributeError(f"module 'medmae' has no attribute {name!r}")
