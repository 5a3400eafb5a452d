"""The two configs of a run, :class:`PretrainConfig` and :class:`FinetuneConfig`, and the fine-tuning defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from medmae.config.base import Strict, refuse
from medmae.config.checks import data_model_problems
from medmae.config.data import DataConfig
from medmae.config.model import MaskConfig, ModelConfig
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


class RunSections(Strict):
    """Checks between the data and model sections of a whole run (both configs)."""

    @model_validator(mode="after")
    def _data_fits_model(self) -> RunSections:
        d, m = self.data, self.model  # type: ignore[attr-defined]
        refuse(data_model_problems(flip_axes=d.flip_axes, spatial_dims=m.spatial_dims, slice_axis=d.slice_axis,
                                   resize=d.resize, crop_scale=d.crop_scale))
        return self


class PretrainConfig(RunSections):
    """Everything one pretraining run needs; saved resolved as ``config.yaml`` in the run directory."""

    name: str = "custom"
    paper: str | None = None
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    mask: MaskConfig = MaskConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    monitor: MonitorConfig = MonitorConfig()
    logging: LoggingConfig = LoggingConfig()
    finetune: dict[str, Any] = Field(default_factory=dict, description="fine-tuning settings of a preset (common, cls, seg)")


class FinetuneModelConfig(ModelConfig):
    """Fine-tuning defaults: drop path 0.1; position embeddings learnable (initialised from the sin-cos table)."""

    drop_path: float = Field(0.1, ge=0.0, lt=1.0)
    pos_embed: Literal["sincos", "learnable"] = "learnable"


class FinetuneOptimConfig(OptimConfig):
    """Fine-tuning defaults (SelfMedMAE / MAE fine-tuning): layer-wise lr decay 0.75, AdamW betas 0.9/0.999."""

    lr: float | None = Field(1e-3, gt=0.0)
    layer_decay: float | None = Field(0.75, gt=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(5.0, ge=0.0)


class FinetuneTrainConfig(TrainConfig):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)


class FinetuneConfig(RunSections):
    """One fine-tuning run: task, data, encoder, head, optimisation and evaluation."""

    name: str = "custom"
    paper: str | None = None
    task: Literal["cls", "seg"] = "cls"
    mode: Literal["finetune", "linear_probe"] = "finetune"
    data: DataConfig = DataConfig()
    model: FinetuneModelConfig = FinetuneModelConfig()
    head: HeadConfig = HeadConfig()
    loss: TaskLossConfig = TaskLossConfig()
    optim: FinetuneOptimConfig = FinetuneOptimConfig()
    train: FinetuneTrainConfig = FinetuneTrainConfig()
    eval: EvalConfig = EvalConfig()
    init: InitConfig = InitConfig()
    logging: LoggingConfig = LoggingConfig()


RunConfig = PretrainConfig | FinetuneConfig
