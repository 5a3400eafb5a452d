"""scikit-learn vs medmae's own code where both do the same job: ROC-AUC / PR-AUC inside the evaluation
bootstrap (2000 resamples) and patient-level stratified k-fold (``StratifiedGroupKFold``).

Prints one JSON object and writes it to ``benchmarks/results/metrics_vs_sklearn.json``:

- ``bootstrap``: seconds for the case-bootstrap CIs of ROC-AUC and PR-AUC (every class, 2000 resamples) with
  medmae's vectorised weighted-rank code (what ``summarize_classification`` runs) and with sklearn's
  ``roc_auc_score`` / ``average_precision_score`` called on each resample; the largest difference between
  the two sets of intervals (they use the same resamples, so it must be ~1e-12).
- ``kfold``: for several case sets (synthetic, and the real ones under ``$MEDMAE_DATA`` when present), the
  round-robin k-fold medmae used before (subjects of each stratum dealt to the folds in a seeded order, kept
  here for the comparison) vs ``StratifiedGroupKFold`` (``medmae.data.splits.kfold`` now): the worst deviation
  of a stratum's image count in a fold from its share (n / k), the spread of fold sizes, and subjects split
  across folds (must be 0).

Usage: ``python benchmarks/metrics_vs_sklearn.py [--resamples 2000] [--repeats 3] [--parts bootstrap,kfold]``
(a part not run keeps its previous entry in the results file).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def kfold_round_robin(cases: list, k: int, seed: int) -> list[dict]:
    """medmae's k-fold before it used scikit-learn: each subject's stratum is its most frequent one, and the
    subjects of each stratum are dealt round-robin to the folds in a seeded order."""
    from collections import defaultdict

    from medmae.data.splits import stratum

    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        groups[c.subject_id].append(i)
    subjects = sorted(groups)
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for s in subjects:
        counts = Counter(stratum(cases[i]) for i in groups[s])
        by_stratum[min(counts, key=lambda key: (-counts[key], key))].append(s)
    fold_of, offset = {}, 0
    for key in sorted(by_stratum):
        members = by_stratum[key]
        for j, idx in enumerate(rng.permutation(len(members))):
            fold_of[members[idx]] = (offset + j) % k
        offset += len(members)
    return [{"train": sorted(cases[i].case_id for s in subjects if fold_of[s] != f for i in groups[s]),
             "val": sorted(cases[i].case_id for s in subjects if fold_of[s] == f for i in groups[s])} for f in range(k)]


def bootstrap_medmae(probs: np.ndarray, targets: np.ndarray, multilabel: bool, names: list[str], n: int) -> np.ndarray:
    from medmae.metrics import summarize_classification

    rows, _ = summarize_classification(probs, targets, multilabel=multilabel, class_names=names, n_resamples=n, seed=0)
    return np.array([(r["ci_low"], r["ci_high"]) for r in rows if r["metric"] in ("auroc", "auprc")])


def bootstrap_sklearn(probs: np.ndarray, targets: np.ndarray, multilabel: bool, names: list[str], n: int) -> np.ndarray:
    """The same resamples (medmae's bootstrap indices), each scored by sklearn, per class."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from medmae.metrics.bootstrap import bootstrap_resamples

    y = targets if multilabel else np.eye(len(names), dtype=int)[targets]
    k = y.shape[1]
    cols = [1] if not multilabel and k == 2 else list(range(k))

    def vector(idx: np.ndarray) -> np.ndarray:
        yy, pp = y[idx], probs[idx]
        if any(yy[:, j].min() == yy[:, j].max() for j in cols):
            raise ValueError("a class without positives or negatives")
        return np.array([roc_auc_score(yy[:, j], pp[:, j]) for j in cols]
                        + [average_precision_score(yy[:, j], pp[:, j]) for j in cols])

    n_cases = len(probs)
    boot = bootstrap_resamples(vector, vector(np.arange(n_cases)), n_cases, n, 0.95, 0)
    out = []
    for j in range(len(cols)):
        out += [(boot.low[j], boot.high[j]), (boot.low[len(cols) + j], boot.high[len(cols) + j])]
    return np.array(out)


def bootstrap_case(name: str, n: int, k: int, multilabel: bool, resamples: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    if multilabel:
        targets = (rng.random((n, k)) < 0.3).astype(int)
        probs = np.clip(0.35 * targets + 0.65 * rng.random((n, k)), 0, 1).round(3)  # rounded: ties
    else:
        targets = rng.integers(0, k, n)
        logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[targets]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    names = [f"c{j}" for j in range(k)]
    times: dict[str, list[float]] = {"medmae": [], "sklearn": []}
    results = {}
    for _ in range(repeats):
        for impl, fn in (("medmae", bootstrap_medmae), ("sklearn", bootstrap_sklearn)):
            t0 = time.perf_counter()
            results[impl] = fn(probs, targets, multilabel, names, resamples)
            times[impl].append(time.perf_counter() - t0)
    med = results["medmae"]
    sk = results["sklearn"]
    # medmae rows: [macro rows...] auroc/auprc per class interleaved (auroc c, auprc c); sklearn built the same way
    diff = float(np.max(np.abs(np.sort(med.ravel()) - np.sort(sk.ravel()))))
    best = {impl: min(t) for impl, t in times.items()}
    return {"case": name, "n": n, "classes": k, "multilabel": multilabel, "resamples": resamples,
            "seconds_medmae": round(best["medmae"], 3), "seconds_sklearn": round(best["sklearn"], 3),
            "sklearn_slower_x": round(best["sklearn"] / best["medmae"], 1), "max_abs_ci_difference": diff}


def fold_quality(cases: list, folds: list[dict]) -> dict:
    from medmae.data.splits import stratum

    by_id = {c.case_id: c for c in cases}
    k = len(folds)
    total = Counter(stratum(c) for c in cases)
    worst = 0.0
    for f in folds:
        got = Counter(stratum(by_id[i]) for i in f["val"])
        worst = max(worst, max(abs(got[s] - n / k) for s, n in total.items()))
    subjects = [{by_id[i].subject_id for i in f["val"]} for f in folds]
    split_subjects = sum(len(a & b) for i, a in enumerate(subjects) for b in subjects[i + 1:])
    sizes = [len(f["val"]) for f in folds]
    return {"worst_stratum_deviation": round(worst, 2), "fold_size_spread": max(sizes) - min(sizes),
            "subjects_split": split_subjects}


def case_sets() -> dict[str, list]:
    from medmae.data.cases import Case

    sets = {}
    labels = ["a"] * 20 + ["b"] * 12 + ["a|b"] * 6 + [""] * 3
    sets["synthetic 41 subjects, 4 strata"] = [Case(f"c{i:03d}", (f"c{i:03d}.png",), f"s{i:03d}", label=lab)
                                               for i, lab in enumerate(labels)]
    rng = np.random.default_rng(1)
    many = []
    for s in range(300):
        lab = rng.choice(["normal", "pneumonia"], p=[0.26, 0.74])
        many += [Case(f"p{s:03d}_{j}", (f"p{s:03d}_{j}.png",), f"p{s:03d}", label=str(lab)) for j in range(1 + s % 4)]
    sets["synthetic 300 patients, 1-4 images each, 26/74 %"] = many
    data = Path(os.environ.get("MEDMAE_DATA", REPO.parent / "shared" / "data"))
    from medmae.data.sources import load_source

    for name, sub, labelled in (("chest X-ray train (5216)", "chestxray_pneumonia_224/dataset", True),
                                ("MSD hippocampus imagesTr (260)", "hippocampus_msd/Task04_Hippocampus", False)):
        if (data / sub).exists():
            spec = load_source(data / sub)
            cases = [c for c in spec.cases if (c.split or "train") == "train" and (not labelled or c.label is not None)]
            sets[name] = cases
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="bootstrap,kfold")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "metrics_vs_sklearn.json")
    args = ap.parse_args()
    from medmae.data.splits import kfold

    import sklearn

    parts = set(args.parts.split(","))
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result.update({"kind": "metrics_vs_sklearn", "when": time.strftime("%Y-%m-%d %H:%M"), "sklearn": sklearn.__version__,
                   "note": "measured on a shared 2-core machine under load: timings are indicative"})
    if "bootstrap" in parts:
        result["bootstrap"] = [
            bootstrap_case("binary, chest X-ray test size", 624, 2, False, args.resamples, args.repeats),
            bootstrap_case("multi-label, 3 findings", 200, 3, True, args.resamples, args.repeats),
            bootstrap_case("multi-label, 14 findings (ChestX-ray14-like)", 1000, 14, True, args.resamples, args.repeats)]
    if "kfold" in parts:
        folds = []
        for name, cases in case_sets().items():
            row = {"cases": name, "n": len(cases), "k": 5}
            for impl, fn in (("round_robin_before", kfold_round_robin), ("StratifiedGroupKFold_now", kfold)):
                t0 = time.perf_counter()
                f = fn(cases, 5, seed=0)
                row[impl] = {**fold_quality(cases, f), "seconds": round(time.perf_counter() - t0, 3)}
            folds.append(row)
        result["kfold"] = folds
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
