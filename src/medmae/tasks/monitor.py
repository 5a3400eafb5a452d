"""Pretraining monitor: a k-nearest-neighbour probe of the encoder's features on a small labelled set.

Every ``monitor.every`` epochs the encoder embeds a fixed labelled subset (whole images, no masking); half of
it is classified by its k nearest neighbours (cosine) in the other half, and the macro ROC-AUC is logged next
to the reconstruction loss (``metrics.jsonl`` rows with ``"kind": "probe"``). The papers note that
representations can stop improving, or get worse, while the reconstruction loss still falls.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from medmae.data.dataset import CaseDataset
from medmae.engine.logging import MetricsLog
from medmae.engine.loop import Trainer
from medmae.metrics import classification_metrics

log = logging.getLogger(__name__)


@torch.no_grad()
def pooled_features(encoder: torch.nn.Module, x_bcs: torch.Tensor) -> torch.Tensor:
    """Mean of the encoder's final patch tokens (ViT) or of its last feature map (hierarchical encoders)."""
    if hasattr(encoder, "forward_tokens"):
        tokens, _ = encoder.forward_tokens(x_bcs)
        return tokens[:, getattr(encoder, "num_prefix_tokens", 0):].mean(dim=1)
    feats = encoder(x_bcs)
    last = feats[-1] if isinstance(feats, (list, tuple)) else feats
    return last.flatten(2).mean(dim=2) if last.dim() > 2 else last


def knn_scores(train_f: np.ndarray, train_y: np.ndarray, query_f: np.ndarray, k: int) -> np.ndarray:
    """Class scores of each query: the mean one-hot / multi-hot label of its k most cosine-similar train items."""
    a = train_f / np.linalg.norm(train_f, axis=1, keepdims=True).clip(1e-8)
    b = query_f / np.linalg.norm(query_f, axis=1, keepdims=True).clip(1e-8)
    nearest = np.argsort(-(b @ a.T), axis=1)[:, : min(k, len(a))]
    return train_y[nearest].mean(axis=1)


class KnnProbe:
    """Training-loop hook (see :class:`medmae.engine.loop.Hook`)."""

    def __init__(self, dataset: CaseDataset, targets: np.ndarray, classes: list[str], multilabel: bool, *,
                 every: int, k: int, run_dir: Path, batch_size: int = 32):
        self.dataset, self.classes, self.multilabel = dataset, classes, multilabel
        self.every, self.k, self.batch_size = every, k, batch_size
        n = len(dataset)
        onehot = targets if multilabel else np.eye(len(classes), dtype=np.float32)[targets]
        self.y = onehot.astype(np.float32)
        self.train_idx, self.query_idx = np.arange(0, n, 2), np.arange(1, n, 2)
        self.log = MetricsLog(run_dir)

    def evaluate(self, encoder: torch.nn.Module, device: torch.device) -> float:
        was = encoder.training
        encoder.eval()
        feats = []
        for i in range(0, len(self.dataset), self.batch_size):
            x = torch.stack([self.dataset[j]["image"] for j in range(i, min(i + self.batch_size, len(self.dataset)))])
            feats.append(pooled_features(encoder, x.to(device)).float().cpu().numpy())
        encoder.train(was)
        f = np.concatenate(feats)
        scores = knn_scores(f[self.train_idx], self.y[self.train_idx], f[self.query_idx], self.k)
        y = self.y[self.query_idx]
        targets = y if self.multilabel else y.argmax(1)
        probs = scores if self.multilabel else scores / scores.sum(1, keepdims=True).clip(1e-8)
        try:
            m = classification_metrics(probs, targets, multilabel=self.multilabel, class_names=self.classes)
        except ValueError as e:  # a class without positives in the query half
            log.warning("kNN probe skipped: %s", e)
            return math.nan
        return float(m["headline_auroc"])

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        if (epoch + 1) % self.every or not trainer.dist.is_main:
            return
        auc = self.evaluate(trainer.model.encoder, trainer.dist.device)
        (trainer.metrics or self.log).write({"kind": "probe", "step": trainer.step, "epoch": epoch + 1, "knn_auroc": auc,
                                             "k": self.k})
        log.info("epoch %d: kNN probe ROC-AUC %.4f", epoch + 1, auc)

    def on_fit_end(self, trainer: Trainer) -> None:
        return None
