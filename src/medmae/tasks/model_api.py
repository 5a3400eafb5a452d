"""The model API for notebooks and scripts: ``medmae.load_encoder(path)`` and ``medmae.load_task_model(run)``.

Each returns the module (eval mode, CPU unless asked) with its ``preprocess``: a callable that turns an image file
(or a list of files: channels, a DICOM series) or an array into the model's input ``(1, C, *S)`` under the
stored contract, through the same readers and preprocessing as training. Also the source of every export
(:func:`export_source_of`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from medmae.config import DataConfig, FinetuneConfig
from medmae.data.cases import Case, DatasetSpec, strip_suffix
from medmae.data.dataset import augment_case
from medmae.data.intensity import apply_intensity
from medmae.data.pipeline import prepare
from medmae.data.preprocess import Preprocessing, load_image, resize_array
from medmae.errors import CheckpointError, ExportError
from medmae.interop import ExportSource
from medmae.models.adapt import read_encoder_source
from medmae.models.heads import Classifier
from medmae.models.registry import encoder_kwargs, family, part_targets
from medmae.run_layout import EXPORT_DIR, TASK_FILE, export_path
from medmae.tasks.inference import load_task_run
from medmae.tasks.monitor import pooled_features

log = logging.getLogger(__name__)


def preprocessing_of(contract_prep: dict[str, Any]) -> Preprocessing:
    """The :class:`Preprocessing` of a contract's ``preprocessing`` (a pool's list of presets: the first one)."""
    d = dict(contract_prep)
    if isinstance(d.get("intensity"), list):
        log.warning("the encoder was pretrained on a pool with several intensity presets; using the first, %s",
                    d["intensity"][0])
        d["intensity"] = d["intensity"][0]
    for key in ("spacing", "resize"):
        d[key] = tuple(d[key]) if d.get(key) else None
    d["label_map"] = tuple(tuple(p) for p in d["label_map"]) if d.get("label_map") else None
    return Preprocessing(**{k: d.get(k) for k in Preprocessing.__dataclass_fields__ if k in d})


@dataclass
class Preprocess:
    """Image file(s) or array -> model input ``(1, C, *size)``: read (RAS for volumes), resampled, intensity
    preset, centre-cropped or padded to ``size``. An array is taken as read from a file, ``(C, *S)`` or ``(*S)``
    for one channel, in its own spacing (no resampling to ``spacing``; ``resize`` and intensity are applied)."""

    prep: Preprocessing
    size: tuple[int, ...]

    def array(self, item: str | Path | Sequence[str | Path] | np.ndarray) -> np.ndarray:
        """The preprocessed image (C, *S) before cropping."""
        if isinstance(item, np.ndarray) or torch.is_tensor(item):
            x = np.asarray(item, dtype=np.float32)
            if x.ndim == len(self.size):
                x = x[None]
            if self.prep.resize is not None and len(self.prep.resize) == x.ndim - 1:
                x = resize_array(x, self.prep.resize)
            return apply_intensity(x, self.prep.intensity).astype(np.float32)
        paths = tuple(str(p) for p in ([item] if isinstance(item, (str, Path)) else item))
        return load_image(Case(strip_suffix(Path(paths[0]).name), paths, paths[0]), self.prep).array

    def __call__(self, item: str | Path | Sequence[str | Path] | np.ndarray) -> torch.Tensor:
        return model_input(self.array(item), self.size, self.prep.slice_axis)[None]


def model_input(image_cs: np.ndarray, size: Sequence[int], slice_axis: int | None = None) -> torch.Tensor:
    """(C, *S) -> (C, *size) as evaluation feeds the model (centre crop / pad); a 2D model on a volume gets its
    middle slice along ``slice_axis``."""
    if image_cs.ndim - 1 == len(size) + 1 and slice_axis is not None:
        image_cs = np.take(image_cs, image_cs.shape[1 + slice_axis] // 2, axis=1 + slice_axis)
    return augment_case(np.asarray(image_cs), None, None, None, tuple(size))[0]


@dataclass
class LoadedEncoder:
    """A pretrained (or fine-tuned) encoder, its preprocessing and contract (``arch``, ``encoder``, ``preprocessing``)."""

    encoder: nn.Module
    preprocess: Preprocess
    contract: dict[str, Any]
    path: str

    @torch.no_grad()
    def embed(self, x_bcs: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D): the mean of the final patch tokens (hierarchical encoders: of the last map)."""
        return pooled_features(self.encoder, x_bcs)


@dataclass
class LoadedTaskModel:
    """A fine-tuned model with its preprocessing, its labels (``task.json``: classes or label names) and config."""

    model: nn.Module
    preprocess: Preprocess
    labels: dict[str, Any]
    config: FinetuneConfig
    checkpoint: str


def load_task_model(run_dir: str | Path, device: str = "cpu") -> LoadedTaskModel:
    """The fine-tuned model of a run (newest valid checkpoint), its preprocessing and labels."""
    cfg, info, model, ckpt = load_task_run(run_dir, device)
    prep = Preprocessing.from_config(cfg.data, cfg.model)
    return LoadedTaskModel(model, Preprocess(prep, tuple(cfg.model.img_size)), info, cfg, str(ckpt))


def export_source_of(path: str | Path, device: str = "cpu") -> ExportSource:
    """A fine-tuning run (its task model), a pretraining run (its ``export/encoder.safetensors``) or an
    ``encoder.safetensors`` as the source of an export."""
    path = Path(path)
    if path.is_dir() and (path / TASK_FILE).is_file():
        task = load_task_model(path, device)
        kwargs = encoder_kwargs(task.config.model)
        parts = {n: p.state_dict() for n, p in part_targets(task.model, family(task.config.model.arch).extra_parts).items()}
        return ExportSource(str(path), task.config.model.arch, task.model.encoder, kwargs,
                            task.preprocess.prep.contract(), task.model, task.labels, parts)
    if path.is_dir():
        if not export_path(path).is_file():
            raise CheckpointError(f"{path}: neither a fine-tuning run (no {TASK_FILE}) nor a pretraining run with "
                                  f"{EXPORT_DIR}/encoder.safetensors")
        path = export_path(path)
    src = read_encoder_source(path)
    if src.contract is None:
        raise ExportError(f"{path}: a foreign checkpoint without a medmae contract; fine-tune it with "
                          "medmae finetune --init, or load it with the library it came from")
    arch, kwargs = src.contract["arch"], dict(src.contract["encoder"])
    try:
        encoder = family(arch).build_encoder(kwargs, 0.0)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{path}: its encoder arguments do not build a {arch} encoder ({e})") from None
    result = encoder.load_state_dict(src.state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(f"{path}: weights do not fit its own contract's encoder (missing "
                          f"{result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]})")
    beside = {n: path.with_name(f"{n}.safetensors") for n in src.contract.get("adaptation", {}).get("extra_parts", [])}
    parts = {n: load_file(str(p)) for n, p in beside.items() if p.is_file()}
    return ExportSource(str(path), arch, encoder.to(device).eval(), kwargs, src.contract["preprocessing"], parts=parts)


def load_encoder(path: str | Path, device: str = "cpu") -> LoadedEncoder:
    """The encoder of a pretraining run, an ``encoder.safetensors`` or a fine-tuning run, ready to embed images:
    ``enc = medmae.load_encoder("runs/mae"); enc.embed(enc.preprocess("x.png"))``."""
    src = export_source_of(path, device)
    prep = preprocessing_of(src.preprocessing)
    contract = {"arch": src.arch, "encoder": src.encoder_kwargs, "preprocessing": src.preprocessing}
    return LoadedEncoder(src.encoder, Preprocess(prep, src.img_size), contract, src.path)


def pooled(model: nn.Module, x_bcs: torch.Tensor) -> torch.Tensor:
    """One embedding per image: a fine-tuned classifier's own pooled features, else the encoder's mean token."""
    with torch.no_grad():
        if isinstance(model, Classifier):
            return model.features(x_bcs)
        return pooled_features(getattr(model, "encoder", model), x_bcs)


def embed_cases(src: ExportSource, spec: DatasetSpec, *, batch_size: int = 32, data_cfg: DataConfig | None = None,
                show_progress: bool = True) -> tuple[list[Case], np.ndarray]:
    """One pooled embedding per case of ``spec`` (N, D) float32, each image preprocessed under ``src``'s contract
    (through the cache) and centre-cropped to the model's input size."""
    prep = preprocessing_of(src.preprocessing)
    prepared = prepare(spec, prep, data_cfg or DataConfig(), show_progress=show_progress)
    model = (src.task_model or src.encoder).eval()
    device = next(model.parameters()).device
    feats = []
    for i in range(0, len(prepared), batch_size):
        x = torch.stack([model_input(np.asarray(p.image), src.img_size, prep.slice_axis)
                         for p in prepared[i:i + batch_size]])
        feats.append(pooled(model, x.to(device)).float().cpu().numpy())
    dim = int(src.encoder.embed_dim)
    return [p.case for p in prepared], (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32))
