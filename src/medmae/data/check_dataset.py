"""Findings of a source or of a pool as a whole in ``medmae data check`` (not of one case)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from medmae.data.cases import DatasetSpec
from medmae.data.check_options import saved_image_masks
from medmae.data.check_report import Finding
from medmae.data.check_summary import group


def dataset_findings(loaded: list[tuple[str, DatasetSpec]], stats: list[dict[str, Any]],
                      full: bool) -> tuple[list[Finding], list[Finding]]:
    """Problems of a source or of the pool as a whole (not of one case)."""
    errors: list[Finding] = []
    warnings: list[Finding] = []
    read = [s for s in stats if s["read"]]
    for name, spec in loaded:
        mine = [s for s in read if s["source"] == name]
        if not spec.cases:
            errors.append(Finding("no_cases", f"{name}: no cases", source=name))
        by_dims = group(mine, "spatial_dims")
        if len(by_dims) > 1:
            examples = ", ".join(f"{d}D: {len(v)} cases (e.g. {v[0]['case_id']})" for d, v in sorted(by_dims.items()))
            errors.append(Finding("dims_mix", f"{name}: 2D and 3D images mixed ({examples})", source=name))
        by_channels = group(mine, "channels")
        if len(by_channels) > 1:
            examples = ", ".join(f"{c} channel(s): {len(v)} (e.g. {v[0]['case_id']})" for c, v in sorted(by_channels.items()))
            warnings.append(Finding("channels_mix", f"{name}: channel counts differ ({examples})", source=name))
        if full and spec.label_names and any(s.get("label_values") for s in mine):
            found = {int(v) for s in mine for v in s.get("label_values", {})}
            unused = sorted(set(spec.label_names) - found)
            if unused:
                names = ", ".join(f"{v} ({spec.label_names[v]})" for v in unused)
                warnings.append(Finding("label_unused", f"{name}: declared label(s) {names} found in no mask", source=name))
        warnings += [Finding(code, message, source=name) for code, message in saved_image_masks(name, spec.label_names, mine)]
        warnings += _leak_findings(name, spec)
        warnings += _duplicate_findings(name, spec)
    pool_dims = {s["spatial_dims"] for s in read}
    if len(loaded) > 1 and len(pool_dims) > 1:
        warnings.append(Finding("pool_dims_mix", "the pool mixes 2D and 3D sources: a 2D model reads the volumes "
                                "as slices only with data.slice_axis set"))
    return errors, warnings


def _leak_findings(name: str, spec: DatasetSpec) -> list[Finding]:
    """Subjects whose cases sit in more than one of train / val / test."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for c in spec.cases:
        if c.split in ("train", "val", "test"):
            splits_of[c.subject_id].add(c.split)
    leaking = sorted(s for s, sp in splits_of.items() if len(sp) > 1)
    if not leaking:
        return []
    return [Finding("subject_leak", f"{name}: {len(leaking)} subject(s) have cases in several splits, e.g. "
                    f"{leaking[0]} in {sorted(splits_of[leaking[0]])}", source=name)]


def _duplicate_findings(name: str, spec: DatasetSpec) -> list[Finding]:
    counts = Counter(c.image for c in spec.cases)
    repeated = [img for img, n in counts.items() if n > 1]
    if not repeated:
        return []
    return [Finding("duplicate_image", f"{name}: {len(repeated)} image(s) are listed by several cases, e.g. "
                    f"{repeated[0][0]} ({counts[repeated[0]]} times)", source=name, file=repeated[0][0])]
