"""``medmae probe``: a frozen encoder judged without fine-tuning, MedMNIST+ style: embeddings of a labelled dataset, a
k-nearest-neighbour classifier (cosine) and a logistic regression (both scikit-learn) fitted on the training cases,
scored on the test cases with the metrics and bootstrap CIs of ``medmae evaluate``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from medmae.data.cases import Case, DatasetSpec
from medmae.data.labels import class_targets
from medmae.data.sources import load_source
from medmae.data.splits import require_both_classes, train_test_split
from medmae.engine.distributed import set_threads
from medmae.errors import ConfigError, SourceError
from medmae.metrics import summarize_classification
from medmae.tasks.model_api import embed_cases, export_source_of

log = logging.getLogger(__name__)


def probe_split(cases: Sequence[Case], test_fraction: float, seed: int) -> tuple[dict[str, list[str]], str]:
    """The dataset's own train / test split when it has both, else a seeded patient-level stratified one."""
    named = {c.split for c in cases}
    if {"train", "test"} <= named:
        return {s: [c.case_id for c in cases if c.split == s] for s in ("train", "test")}, "dataset"
    if not 0 < test_fraction < 1:
        raise ConfigError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    split = train_test_split(cases, test_fraction=test_fraction, seed=seed)
    return {"train": split["train"] + split["val"], "test": split["test"]}, f"stratified, seed {seed}"


def knn_probs(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Class probabilities of a k-nearest-neighbour classifier (cosine distance, uniform votes): the share of the
    k nearest training cases in each class (multi-label: carrying each label)."""
    clf = KNeighborsClassifier(n_neighbors=min(k, len(train_f)), metric="cosine", algorithm="brute").fit(train_f, train_y)
    proba = clf.predict_proba(test_f)
    if train_y.ndim == 1:
        out = np.zeros((len(test_f), n_classes))
        out[:, clf.classes_] = proba
        return out
    return np.stack([p[:, list(c).index(1)] if 1 in c else np.zeros(len(test_f)) for p, c in zip(proba, clf.classes_)], 1)


def logistic_probs(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, multilabel: bool, seed: int,
                   n_classes: int) -> np.ndarray:
    """Class probabilities of a logistic regression on standardised features (one per class when multi-label)."""
    scaler = StandardScaler().fit(train_f)
    a, b = scaler.transform(train_f), scaler.transform(test_f)
    if not multilabel:
        clf = LogisticRegression(max_iter=2000, random_state=seed).fit(a, train_y)
        probs = np.zeros((len(b), n_classes))
        probs[:, clf.classes_] = clf.predict_proba(b)
        return probs
    cols = []
    for j in range(train_y.shape[1]):
        y = train_y[:, j]
        cols.append(np.full(len(b), float(y.mean())) if y.min() == y.max()
                    else LogisticRegression(max_iter=2000, random_state=seed).fit(a, y).predict_proba(b)[:, 1])
    return np.stack(cols, 1)


def probe(model: str | Path, *, data: str | Path, k: int = 20, test_fraction: float = 0.3, seed: int = 0,
          bootstrap: int = 1000, out: str | Path | None = None, batch_size: int = 32, device: str = "cpu",
          threads: int | None = None) -> dict[str, Any]:
    """kNN and logistic-regression probes of ``model``'s frozen embeddings on ``data``; returns (and with ``out``
    writes as JSON) the split, the embedding size and both probes' metric rows with bootstrap 95 % CIs."""
    set_threads(threads, "--threads")
    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    start = time.perf_counter()
    src = export_source_of(model, device)
    spec = load_source(data)
    cases = [c for c in spec.cases if c.label is not None]
    if not spec.classes or not cases:
        raise SourceError(f"{data}: no class labels to probe with (a 'label' column, class folders or dataset.json 'classes')")
    split, how = probe_split(cases, test_fraction, seed)
    by_id = {c.case_id: c for c in cases}
    train, test = [by_id[i] for i in split["train"]], [by_id[i] for i in split["test"]]
    if not train or not test:
        raise SourceError(f"{data}: the split leaves {len(train)} training and {len(test)} test cases; need both")
    info = {"classes": list(spec.classes), "multilabel": spec.multilabel}
    require_both_classes(test, info["classes"], f"{data} (test cases of the probe)")
    _, feats = embed_cases(src, DatasetSpec(spec.root, train + test, spec.label_names, spec.classes, spec.multilabel),
                           batch_size=batch_size)
    y = class_targets(train + test, info)
    n = len(train)
    results = {"knn": knn_probs(feats[:n], y[:n], feats[n:], k, len(info["classes"])),
               "logistic": logistic_probs(feats[:n], y[:n], feats[n:], info["multilabel"], seed, len(info["classes"]))}
    summary: dict[str, Any] = {"model": str(model), "data": str(data), "split": how, "n_train": n, "n_test": len(test),
                               "embedding_dim": int(feats.shape[1]), "classes": info["classes"],
                               "multilabel": info["multilabel"], "k": k}
    for name, probs in results.items():
        rows, _ = summarize_classification(probs, y[n:], multilabel=info["multilabel"], class_names=info["classes"],
                                           n_resamples=bootstrap, seed=seed)
        summary[name] = rows
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=1, default=_plain) + "\n")
    return summary


def _plain(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)
