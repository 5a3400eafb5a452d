"""Typed configuration: pydantic models loaded from YAML presets or files, with ``key=value`` overrides.

Floor 1 of the package (see ``docs/architecture.md``): pydantic and YAML only, no torch, so reading or checking a
config is cheap. Unknown keys and bad values raise :class:`ConfigError` naming the key path (the CLI exits with
code 2).

============  ===================================================================================
``base``      :class:`Strict` (what every section shares)
``augment``   ``data.augment`` (MONAI augmentation presets and probabilities)
``data``      the ``data`` section; ``filters``: the keys and defaults of ``data.include`` / ``exclude``
``model``     the ``model`` (with each backbone family's own section) and ``mask`` sections
``train``     ``loss``, ``optim``, ``train``, ``monitor``, ``head``, ``eval``, ``init``
``tracking``  the ``logging`` section (TensorBoard / MLflow sinks, progress lines)
``runs``      :class:`PretrainConfig`, :class:`FinetuneConfig`
``checks``    checks across keys, and the per-architecture ``model`` keys of ``config.yaml``
``loading``   presets, YAML files, overrides, validation messages, :func:`dump_yaml`
============  ===================================================================================
"""

from __future__ import annotations

from medmae.config.augment import AUGMENT_PRESETS, AugmentConfig
from medmae.config.base import Strict
from medmae.config.data import DataConfig, IntensityConfig, SourceEntry, SyntheticConfig
from medmae.config.loading import (
    apply_overrides,
    deep_merge,
    dump_yaml,
    finetune_raw_from_mapping,
    finetune_raw_from_preset,
    load_config,
    load_raw,
    parse_override,
    preset_dict,
    preset_names,
    set_data_path,
    validate,
)
from medmae.config.model import VIT_SIZES, DecoderConfig, MaskConfig, ModelConfig, ResEncConfig, SwinConfig
from medmae.config.runs import (
    FinetuneConfig,
    FinetuneModelConfig,
    FinetuneOptimConfig,
    FinetuneTrainConfig,
    PretrainConfig,
    RunConfig,
    RunSections,
)
from medmae.config.tracking import LoggingConfig
from medmae.config.train import (
    EvalConfig,
    HeadConfig,
    InitConfig,
    LossConfig,
    MonitorConfig,
    OptimConfig,
    TaskLossConfig,
    TrainConfig,
)
from medmae.errors import ConfigError

__all__ = [
    "VIT_SIZES", "ConfigError", "DataConfig", "DecoderConfig", "EvalConfig", "FinetuneConfig", "FinetuneModelConfig",
    "FinetuneOptimConfig", "FinetuneTrainConfig", "HeadConfig", "InitConfig", "IntensityConfig", "LoggingConfig", "LossConfig",
    "MaskConfig", "ModelConfig", "MonitorConfig", "OptimConfig", "PretrainConfig", "ResEncConfig", "RunConfig",
    "RunSections", "SourceEntry", "Strict", "SwinConfig", "SyntheticConfig", "TaskLossConfig", "TrainConfig",
    "apply_overrides", "deep_merge", "dump_yaml", "finetune_raw_from_mapping", "finetune_raw_from_preset", "load_config", "load_raw",
    "parse_override", "preset_dict", "preset_names", "set_data_path", "validate",
]
__all__ += ["AUGMENT_PRESETS", "AugmentConfig"]
