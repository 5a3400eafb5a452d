"""Typed configuration: pydantic models loaded from YAML presets or files, with ``key=value`` overrides.

Unknown keys and bad values raise :class:`ConfigError` naming the key path (the CLI exits with code 2).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medmae.config_checks import (
    data_model_problems,
    eval_problems,
    intensity_problems,
    model_dump_for_arch,
    swin_problems,
    vit_problems,
)
from medmae.data.series_filter import DEFAULT_EXCLUDE, check_filter, with_default_exclude
from medmae.errors import ConfigError
from medmae.models.vit import VIT_SIZES


class Strict(BaseModel):
    """Unknown keys and non-finite floats (``.nan``, ``.inf``) are errors in every section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


def _refuse(problems: list[str]) -> None:
    """Raise the problems of a cross-key check as one validation error (one line each)."""
    if problems:
        raise ValueError("\n".join(problems))


class IntensityConfig(Strict):
    """Intensity preset applied once per image before caching (see :mod:`medmae.data.intensity`)."""

    name: Literal["ct_window", "mri_zscore_nonzero", "xray_histeq", "minmax", "none"] = "minmax"
    lo: float = -175.0
    hi: float = 250.0
    percentiles: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ranges(self) -> IntensityConfig:
        _refuse(intensity_problems(self.lo, self.hi, self.percentiles) if self.name != "none" else [])
        return self


class SyntheticConfig(Strict):
    kind: Literal["cxr", "abdomen_ct", "brain_mr"] = "cxr"
    n: int = Field(64, ge=2)
    size: list[int] | None = None
    seed: int = Field(0, ge=0)


class SourceEntry(Strict):
    """One source of a pretraining pool (MedMAE's MID, VIS-MAE's multi-modality pool)."""

    path: str
    weight: float = Field(1.0, gt=0.0)
    modality: str | None = None
    intensity: IntensityConfig | None = None
    splits: list[str] | None = None


class DataConfig(Strict):
    """Where the images come from and how they are prepared.

    ``path`` names one dataset; ``sources`` a pool of several (each with its own modality tag, intensity
    preset and sampling weight); neither means built-in synthetic data.
    """

    path: str | None = None
    sources: list[SourceEntry] | None = None
    sampling: Literal["uniform", "source", "modality"] = "uniform"
    modality_weights: dict[str, float] | None = None
    splits: list[str] | None = None
    slice_axis: Literal[0, 1, 2] | None = Field(None, description="2D models: train on slices of 3D volumes along this axis")
    on_bad_case: Literal["raise", "skip"] = "raise"
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)
    synthetic: SyntheticConfig = SyntheticConfig()
    intensity: IntensityConfig = IntensityConfig()
    spacing: list[Annotated[float, Field(gt=0.0)]] | None = None
    orientation: Literal["RAS"] | None = "RAS"
    resize: list[Annotated[int, Field(ge=1)]] | None = None
    crop_scale: tuple[float, float] | None = None
    flip_axes: list[int] = []
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    cache_dir: str | None = None
    num_workers: int = Field(0, ge=0)
    figure_cases: int = Field(4, ge=1)
    label_fraction: float = Field(1.0, gt=0.0, le=1.0, description="fine-tuning: share of the labelled training cases used")
    label_seed: int | None = Field(None, ge=0, description="seed of the label subset (default: eval.split_seed)")
    label_map: dict[int, int] | None = Field(None, description="mask values to replace, e.g. {255: 1} for 0/255 masks")
    foreground_prob: float = Field(0.0, ge=0.0, le=1.0, description="segmentation: share of crops centred on foreground")
    labels: dict[int, str] | None = Field(
        None, description="segmentation label names by mask value, e.g. {1: lesion}; replaces the labels a dataset.json "
                          "declares (0 is background when not named)")
    include: dict[str, str] = Field(
        default_factory=dict, description="keep only cases whose DICOM attributes match every regex, e.g. {Modality: MR, "
                                          "SeriesDescription: '(?i)t1'} (medmae.data.series_filter.FILTER_KEYWORDS)")
    exclude: dict[str, str | None] = Field(
        default_factory=lambda: dict(DEFAULT_EXCLUDE),
        description="drop cases whose DICOM attribute matches any regex; merged over the defaults (non-image Modality "
                    "SEG/RTSTRUCT/RTDOSE/..., SeriesDescription naming a mask/label/seg/ROI); null switches one off")

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _regex_text(cls, value: Any) -> Any:
        """Regexes as text (``SeriesNumber: 3`` is '3'); an unknown keyword or a bad regex names the keyword."""
        if isinstance(value, dict):
            value = {k: v if v is None else str(v) for k, v in value.items()}
            check_filter(value)
        return value

    @field_validator("exclude")
    @classmethod
    def _over_defaults(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        return with_default_exclude(value)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.path is not None and self.sources:
            raise ValueError("give data.path or data.sources, not both")
        return self


class DecoderConfig(Strict):
    embed_dim: int = Field(512, ge=1)
    depth: int = Field(8, ge=1)
    num_heads: int = Field(16, ge=1)


class SwinConfig(Strict):
    """Swin Transformer (``arch: swin``, VIS-MAE): stages of shifted-window blocks joined by patch merging.
    The patch size is ``model.patch_size`` (Swin: 4); ``mlp_ratio``, ``qkv_bias`` and ``drop_path`` are shared."""

    embed_dim: int = Field(96, ge=1)
    depths: list[Annotated[int, Field(ge=1)]] = [2, 2, 2, 2]
    num_heads: list[Annotated[int, Field(ge=1)]] = [3, 6, 12, 24]
    window_size: int = Field(7, ge=1)
    decoder_depths: list[int] | None = Field(
        None, description="blocks per up-stage of the decoders, deepest first (len(depths) - 1 values); "
                          "None mirrors the encoder (Swin-MAE / Swin-UNet)")

    @model_validator(mode="after")
    def _check(self) -> SwinConfig:
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} need the same (non-zero) length")
        if self.decoder_depths is not None and len(self.decoder_depths) != len(self.depths) - 1:
            raise ValueError(f"decoder_depths {self.decoder_depths} needs {len(self.depths) - 1} values (one per up-stage)")
        return self


class ResEncConfig(Strict):
    """Residual-encoder U-Net (``arch: resenc``, nnU-Net ResEnc / Revisiting MAE 3D). Stage 0 keeps the
    resolution of the stem (stride ``model.patch_size``, nnU-Net: 1), every later stage halves it."""

    widths: list[Annotated[int, Field(ge=1)]] = [32, 64, 128, 256, 320, 320]
    blocks: list[Annotated[int, Field(ge=1)]] = [1, 3, 4, 6, 6, 6]
    decoder_blocks: int = Field(1, ge=1, description="residual blocks per decoder stage (nnU-Net: 1)")
    kernel_size: int = Field(3, ge=1)
    deep_supervision: bool = Field(False, description="segmentation: also return logits of the coarser decoder stages in training")

    @model_validator(mode="after")
    def _check(self) -> ResEncConfig:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} need the same (non-zero) length")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        return self


class ModelConfig(Strict):
    arch: Literal["vit", "swin", "resenc"] = "vit"
    spatial_dims: Literal[2, 3] = 2
    img_size: list[Annotated[int, Field(ge=1)]] = [224, 224]
    patch_size: list[Annotated[int, Field(ge=1)]] | Annotated[int, Field(ge=1)] = 16
    in_channels: int = Field(1, ge=1)
    size: Literal["vit-t", "vit-s", "vit-b", "vit-l"] | None = "vit-b"
    embed_dim: int | None = Field(None, ge=1)
    depth: int | None = Field(None, ge=1)
    num_heads: int | None = Field(None, ge=1)
    mlp_ratio: float = Field(4.0, gt=0.0)
    qkv_bias: bool = True
    pos_embed: Literal["sincos", "learnable"] = "sincos"
    cls_token: bool = True
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    decoder: DecoderConfig = DecoderConfig()
    swin: SwinConfig = SwinConfig()
    resenc: ResEncConfig = ResEncConfig()
    encoder: dict[str, Any] | None = Field(None, description="explicit encoder arguments (set when fine-tuning adopts a pretrained encoder)")

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if len(self.img_size) != self.spatial_dims:
            raise ValueError(f"img_size {self.img_size} needs {self.spatial_dims} values for spatial_dims={self.spatial_dims}")
        patch = self.patch
        if len(patch) != self.spatial_dims:
            raise ValueError(f"patch_size {self.patch_size} needs {self.spatial_dims} values")
        bad = [(s, p) for s, p in zip(self.img_size, patch) if s % p]
        if bad:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {patch}")
        if self.arch == "vit" and self.size is None and None in (self.embed_dim, self.depth, self.num_heads):
            raise ValueError("give either size (vit-t/s/b/l) or all of embed_dim, depth, num_heads")
        if self.arch == "vit":
            embed_dim, _, num_heads = self.dims
            _refuse(vit_problems(embed_dim, num_heads, self.decoder.embed_dim, self.decoder.num_heads))
        else:
            _refuse(swin_problems(self.swin.embed_dim, self.swin.num_heads) if self.arch == "swin" else [])
            self._check_hierarchical(patch)
        return self

    def _check_hierarchical(self, patch: list[int]) -> None:
        """Swin / ResEnc halve the resolution between stages: the input must divide by patch * 2**(stages - 1)."""
        if self.arch == "swin" and self.spatial_dims != 2:
            raise ValueError(f"arch swin is 2D only, got spatial_dims={self.spatial_dims}")
        stages = len(self.swin.depths) if self.arch == "swin" else len(self.resenc.widths)
        unit = [p * 2 ** (stages - 1) for p in patch]
        if any(s % u for s, u in zip(self.img_size, unit)):
            raise ValueError(f"img_size {self.img_size} must be divisible by {unit} (patch_size {patch} x 2**{stages - 1} "
                             f"for {stages} {self.arch} stages)")

    @property
    def patch(self) -> list[int]:
        p = self.patch_size
        return [p] * self.spatial_dims if isinstance(p, int) else list(p)

    @property
    def dims(self) -> tuple[int, int, int]:
        """(embed_dim, depth, num_heads): explicit values win over ``size``."""
        base = VIT_SIZES[self.size] if self.size else (None, None, None)
        return (
            self.embed_dim or base[0],
            self.depth or base[1],
            self.num_heads or base[2],
        )


class MaskConfig(Strict):
    """``random``: tokens (ViT; Swin: single patches); ``window``: Swin blocks of ``block_size`` px (VIS-MAE);
    ``block``: CNN blocks of ``block_size`` voxels zeroed in the input (nnssl), ``sparse`` for SparK-style encoding."""

    kind: Literal["random", "window", "block"] = "random"
    ratio: float = Field(0.75, ge=0.0, lt=1.0)
    block_size: Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=1)]] = Field(16, description="window / block: side of a mask block in pixels (voxels)")
    sparse: bool = Field(False, description="block: re-apply the mask after every encoder stage (SparK)")

    def block_shape(self, spatial_dims: int) -> list[int]:
        b = self.block_size
        return [b] * spatial_dims if isinstance(b, int) else list(b)


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
    min_steps: int | None = Field(None, ge=1, description="at least this many steps even when epochs give fewer (small label fractions)")
    seed: int = Field(0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    keep_last: int = Field(2, ge=1)
    figure_every: int = Field(50, ge=1, description="epochs between reconstruction figures")
    log_every: int = Field(10, ge=1)
    nan_max_consecutive: int = Field(5, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads (torch.set_num_threads); null: torch's default")
    compile: bool = Field(False, description="torch.compile the model (pays off on GPUs; slow warm-up on CPU)")


class MonitorConfig(Strict):
    """Online k-NN probe of the encoder during pretraining, on the pretraining data's own class labels."""

    every: int | None = Field(None, ge=1, description="epochs between probes; None switches the monitor off")
    k: int = Field(20, ge=1)
    max_cases: int = Field(512, ge=4)


class RunSections(Strict):
    """Checks between the data and model sections of a whole run (both configs)."""

    @model_validator(mode="after")
    def _data_fits_model(self) -> RunSections:
        d, m = self.data, self.model  # type: ignore[attr-defined]
        _refuse(data_model_problems(flip_axes=d.flip_axes, spatial_dims=m.spatial_dims, slice_axis=d.slice_axis,
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
    finetune: dict[str, Any] = Field(default_factory=dict, description="fine-tuning settings of a preset (common, cls, seg)")


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
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    regions: dict[str, list[int]] | None = None
    mean_over: list[str] | None = None
    bootstrap: int = Field(2000, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        _refuse(eval_problems(test_fraction=self.test_fraction, val_fraction=self.val_fraction, folds=self.folds,
                              fold=self.fold, regions=self.regions, mean_over=self.mean_over))
        return self


class InitConfig(Strict):
    allow_mismatch: list[Literal["intensity", "orientation", "spacing"]] = []


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


def finetune_raw_from_preset(name: str, task: str) -> dict[str, Any]:
    """A preset's fine-tuning settings: its data and model sections, then ``finetune`` common keys, then
    ``finetune.<task>``."""
    raw = preset_dict(name)
    ft = raw.get("finetune") or {}
    if task not in ft:
        raise ConfigError(f"preset {name!r} has no fine-tuning settings for task {task!r} (finetune.{task})")
    out: dict[str, Any] = {"name": raw.get("name", name), "paper": raw.get("paper"), "task": task,
                           "data": copy.deepcopy(raw.get("data", {})), "model": copy.deepcopy(raw.get("model", {}))}
    out["model"].pop("decoder", None)
    common = {k: v for k, v in ft.items() if k not in ("cls", "seg")}
    return deep_merge(deep_merge(out, common), ft[task])


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


# ---------------------------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    """Names of the presets shipped in the package."""
    return sorted(p.name[:-5] for p in resources.files("medmae.presets").iterdir() if p.name.endswith(".yaml"))


def preset_dict(name: str) -> dict[str, Any]:
    """Raw preset mapping (YAML) by name."""
    path = resources.files("medmae.presets") / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return yaml.safe_load(path.read_text()) or {}


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    path = [k for k in key.strip().split(".") if k]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for k in path[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = {}
                node[k] = child
            node = child
        node[path[-1]] = value
    return out


_KEY_LINE = re.compile(r"^[A-Za-z_][\w.\[\]*]*: ")


def _located(loc: str, line: str) -> str:
    """A section validator's ``"key: problem"`` line with the section's path in front (``model.num_heads: ...``)."""
    if _KEY_LINE.match(line):
        return f"{loc}.{line}" if loc else line
    return f"{loc or '<root>'}: {line}"


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif e["type"] == "value_error":  # a cross-key check: its lines name their keys
            lines += [_located(loc, line) for line in e["msg"].removeprefix("Value error, ").splitlines()]
        else:
            got = "" if isinstance(e.get("input"), Mapping) else f" (got {e.get('input')!r})"
            lines.append(f"{loc or '<root>'}: {e['msg']}{got}")
    return f"invalid configuration ({source}):\n  " + "\n  ".join(lines)


def validate(model_cls: type[BaseModel], raw: Mapping[str, Any], source: str) -> Any:
    try:
        return model_cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def load_raw(config: str | Path | None, preset: str | None) -> tuple[dict[str, Any], str]:
    """Raw mapping from a preset name or a YAML file (exactly one), and a label for error messages."""
    if (config is None) == (preset is None):
        raise ConfigError("give exactly one of a preset name (--preset) or a config YAML file")
    if preset is not None:
        return preset_dict(preset), f"preset {preset}"
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          "save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw, str(path)


def load_config(
    model_cls: type[BaseModel],
    config: str | Path | BaseModel | Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    overrides: Iterable[str] = (),
) -> Any:
    """Build a validated config from a preset / YAML path / mapping / model, then apply overrides."""
    if isinstance(config, BaseModel):
        raw, source = config.model_dump(mode="json"), "given config"
        if preset is not None:
            raise ConfigError("give a config object or a preset, not both")
    elif isinstance(config, Mapping):
        raw, source = dict(config), "given mapping"
    else:
        raw, source = load_raw(config, preset)
    overrides = list(overrides)
    if overrides:
        source += " with overrides " + " ".join(overrides)
    return validate(model_cls, apply_overrides(raw, overrides), source)


def set_data_path(cfg: Any, data: str | Path) -> None:
    """``--data`` sets ``data.path``; a config whose data is a pool (``data.sources``) cannot take it."""
    if cfg.data.sources:
        raise ConfigError(f"--data {data}: the config already names a pool in data.sources; give one or the other")
    cfg.data.path = str(data)


def dump_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML; ``model`` keeps only the keys its ``arch`` reads (the MAE decoder only when
    pretraining), so the file loads back to an equivalent config."""
    raw = cfg.model_dump(mode="json")
    model = raw.get("model")
    if isinstance(model, dict) and "arch" in model:
        raw["model"] = model_dump_for_arch(model, model["arch"], keep_decoder=isinstance(cfg, PretrainConfig))
    return yaml.safe_dump(raw, sort_keys=False)
