"""Sections of the optimisation and the task: ``loss``, ``optim``, ``train``, ``monitor``, ``head``, ``eval``, ``init``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medmae.config.base import Beta, Strict, refuse
from medmae.config.checks import eval_problems


class LossConfig(Strict):
    norm_pix: bool = True


class OptimConfig(Strict):
    """AdamW (or SGD) with warmup + cosine (or poly). ``lr`` None means ``base_lr * global_batch / 256`` (MAE's rule)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float | None = Field(None, gt=0.0)
    base_lr: float = Field(1.5e-4, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    warmup_epochs: float = Field(40.0, ge=0.0)
    min_lr: float = Field(0.0, ge=0.0)
    clip_grad: float | None = Field(None, gt=0.0)
    layer_decay: float | None = Field(None, gt=0.0, le=1.0, description="layer-wise lr decay (fine-tuning)")
    fused: bool = True
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only (nnU-Net: 0.99)")
    nesterov: bool = Field(False, description="sgd only (nnU-Net: true)")
    schedule: Literal["cosine", "poly"] = Field("cosine", description="after warmup: half-cosine, or nnU-Net's poly decay")
    poly_power: float = Field(0.9, gt=0.0, description="poly schedule exponent")


class TrainConfig(Strict):
    epochs: int = Field(800, ge=1)
    batch_size: int = Field(64, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(
        None, gt=0.0, description="time budget of the training loop: the step count is fixed once from the measured "
                                  "speed of the first steps (medmae.engine.budget), never above epochs / max_steps")
    min_steps: int | None = Field(None, ge=1, description="at least this many steps even when epochs give fewer (small label fractions)")
    seed: int = Field(0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    keep_last: int = Field(2, ge=1)
    figure_every: int = Field(50, ge=1, description="epochs between reconstruction figures")
    log_every: int = Field(10, ge=1)
    nan_max_consecutive: int = Field(5, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads (torch.set_num_threads); null: OMP_NUM_THREADS where set, "
                                 "else torch's default capped at the CPUs this process may use (affinity, container quota)")
    compile: bool = Field(False, description="torch.compile the model (pays off on GPUs; slow warm-up on CPU)")
    parallel: Literal["ddp", "fsdp"] = Field("ddp", description="under torchrun: ddp (a model replica per process) "
                                             "or fsdp (FSDP2: parameters, gradients, optimizer state sharded; ViT-L+)")
    dist_timeout_s: int = Field(1800, ge=10, description="seconds a process waits in a collective for the others "
                                "before it fails (a hung node); gloo sees a dead one at once")


class MonitorConfig(Strict):
    """Online k-NN probe of the encoder during pretraining, on the pretraining data's own class labels."""

    every: int | None = Field(None, ge=1, description="epochs between probes; None switches the monitor off")
    k: int = Field(20, ge=1)
    max_cases: int = Field(512, ge=4)


class HeadConfig(Strict):
    pool: Literal["cls", "mean"] = "cls"
    feature_size: int = Field(16, ge=4, description="UNETR decoder width")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class TaskLossConfig(Strict):
    dice_weight: float = Field(1.0, ge=0.0)
    ce_weight: float = Field(1.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class EvalConfig(Strict):
    """How a held-out split is made (when the data has none) and how it is scored."""

    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="0: no held-out split (train on every case)")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    folds: int | None = Field(None, ge=2, description="k-fold cross-validation: held-out = fold `fold` of `folds`")
    fold: int = Field(0, ge=0)
    split_seed: int = Field(0, ge=0)
    sw_overlap: float = Field(0.5, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(4, ge=1)
    tta: bool | None = Field(None, description="mirror test-time augmentation over data.flip_axes; null: on for "
                                               "segmentation with a CNN (arch resenc), off otherwise")
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    regions: dict[str, list[int]] | None = None
    mean_over: list[str] | None = None
    bootstrap: int = Field(2000, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        refuse(eval_problems(test_fraction=self.test_fraction, val_fraction=self.val_fraction, folds=self.folds,
                             fold=self.fold, regions=self.regions, mean_over=self.mean_over))
        return self


class InitConfig(Strict):
    allow_mismatch: list[Literal["intensity", "orientation", "spacing"]] = []
