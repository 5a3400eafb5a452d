"""The dataset fingerprint a plan is made from: what ``medmae data check`` reads (shapes, spacings, intensity
statistics, modality, label values, class balance), per case, plus the CT foreground intensities nnU-Net
windows with.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medmae.data.check import QUICK_SAMPLE, CheckReport, check_source
from medmae.data.image import PILLOW_SUFFIXES, image_suffix
from medmae.data.modality_fit import CT, MR, RASTER, modality_family
from medmae.data.readers import read_image, read_label
from medmae.data.sources import load_source
from medmae.errors import ReadError, SourceError

log = logging.getLogger(__name__)

XRAY_TAGS = ("CR", "DX", "DR", "XR", "X-RAY", "XRAY", "RG", "MG")  # DICOM / manifest tags of projection radiographs
FOREGROUND_PERCENTILES = (0.5, 99.5)  # nnU-Net's CT window: these percentiles of the labelled foreground
FOREGROUND_CASES = 8  # cases read for the CT foreground intensities
FOREGROUND_VOXELS = 20_000  # voxels kept per case for those percentiles
BODY_HU = -500.0  # without labels, CT voxels above this count as the body (air and the table below)


@dataclass
class Fingerprint:
    """Per-case geometry and the dataset-level statistics a plan needs (everything JSON-able)."""

    source: str
    spatial_dims: int
    cases: int  # in the source
    labelled_seg: int  # cases with a mask
    labelled_cls: int  # cases with a class label
    shapes: list[list[int]]  # of the cases read
    spacings: list[list[float]]
    channels: int
    grey_as_rgb: bool  # three channels with the same statistics: a grey picture stored as RGB
    modality: str | None  # CT, MR, XR, raster (an untagged picture) or another tag; None: unknown
    physical_spacing: bool  # spacings from image headers (mm), not pixel units of pictures
    intensity: dict[str, float]  # channel 0: min, median p1 / p50 / p99 over cases, max
    foreground: tuple[float, float] | None = None  # CT: FOREGROUND_PERCENTILES of foreground HU
    label_values: list[int] = field(default_factory=list)
    label_names: dict[str, str] = field(default_factory=dict)
    voxel_fraction: dict[str, float] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)  # class -> cases
    multilabel: bool = False
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    read: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The compact part a plan file records (no per-case lists)."""
        d = {k: v for k, v in self.as_dict().items() if k not in ("shapes", "spacings")}
        d["median_shape"] = np.median(np.asarray(self.shapes, dtype=float), axis=0).tolist()
        d["median_spacing"] = np.median(np.asarray(self.spacings, dtype=float), axis=0).tolist()
        return d


def modality_of(read: list[dict[str, Any]]) -> str | None:
    """The most common modality family of the cases read: CT, MR, XR (radiograph tags), raster, or a tag."""
    families = Counter()
    for s in read:
        tag = str(s.get("modality") or "").strip().upper()
        if tag.startswith(XRAY_TAGS):
            families["XR"] += 1
            continue
        fam = modality_family(s.get("modality"), s["image"][0])
        families[tag if fam == "other" else fam] += 1
    if not families:
        return None
    top = families.most_common(1)[0][0]
    return top if top in (CT, MR, "XR", RASTER) else (top or None)


def has_physical_spacing(paths: list[str]) -> bool:
    """False for pictures (PNG/JPEG/TIFF...) and ``.npz`` arrays: their spacing is one per pixel, not millimetres."""
    return all(image_suffix(p) not in PILLOW_SUFFIXES and not p.split("::")[0].endswith(".npz") for p in paths)


def grey_as_rgb(read: list[dict[str, Any]]) -> bool:
    """Every case read has 3 channels whose 1st / 50th / 99th percentiles agree: a grey picture saved as RGB."""
    rgb = [s for s in read if s["channels"] == 3]
    if not rgb or len(rgb) != len(read):
        return False
    keys = ("p1", "p50", "p99")
    return all(all(abs(ch[k] - s["intensity"][0][k]) <= 1e-3 * (1 + abs(s["intensity"][0][k])) for k in keys)
               for s in rgb for ch in s["intensity"][1:])


def from_report(report: CheckReport, counts: tuple[int, int] | None = None) -> Fingerprint:
    """A fingerprint from a ``data check`` report (its summary and per-case statistics); ``counts``: cases with a
    mask and cases with a class label in the whole source (default: among the cases the report lists)."""
    s = report.summary
    read = [c for c in report.cases if c.get("read")]
    if not read:
        first = report.errors[0].message if report.errors else "no readable case"
        raise SourceError(f"{', '.join(report.sources)}: nothing to plan from ({first})")
    dims = Counter(c["spatial_dims"] for c in read).most_common(1)[0][0]
    read = [c for c in read if c["spatial_dims"] == dims]
    intensity = (s["intensity"] or [{}])[0]
    labels = s["labels"]
    return Fingerprint(
        source=", ".join(report.sources),
        spatial_dims=int(dims),
        cases=int(s["cases"]["total"]),
        labelled_seg=counts[0] if counts else sum(1 for c in report.cases if c.get("mask")),
        labelled_cls=counts[1] if counts else sum(1 for c in report.cases if c.get("label") is not None),
        shapes=[list(map(int, c["shape"])) for c in read],
        spacings=[list(map(float, c["spacing"])) for c in read],
        channels=int(Counter(c["channels"] for c in read).most_common(1)[0][0]),
        grey_as_rgb=grey_as_rgb(read),
        modality=modality_of(read),
        physical_spacing=all(has_physical_spacing(c["image"]) for c in read),
        intensity={k: float(intensity[k]) for k in ("min", "p1", "p50", "p99", "max") if k in intensity},
        label_values=[int(v) for v in labels["found"]],
        label_names={str(k): str(v) for k, v in labels["declared"].items()},
        voxel_fraction={str(k): float(v) for k, v in labels["voxel_fraction"].items()},
        classes={str(k): int(v) for k, v in s["classes"]["counts"].items()},
        multilabel=bool(s["classes"]["multilabel"]),
        splits={str(k): dict(v) for k, v in s["splits"].items()},
        read=len(read),
    )


def foreground_percentiles(cases: list[dict[str, Any]], percentiles: tuple[float, float] = FOREGROUND_PERCENTILES,
                           limit: int = FOREGROUND_CASES, seed: int = 0) -> tuple[float, float] | None:
    """Percentiles of the intensities inside the masks (nnU-Net's CT window); cases without masks: of the body
    (voxels above ``BODY_HU``). None when nothing could be read."""
    rng = np.random.default_rng(seed)
    picked = [c for c in cases if c.get("read")][:limit]
    values = []
    for c in picked:
        try:
            x, _ = read_image(c["image"] if len(c["image"]) > 1 else c["image"][0])
            inside = (read_label(c["mask"])[0] > 0) if c.get("mask") else (x[0] > BODY_HU)
            v = x[0][inside] if inside.shape == x.shape[1:] else x[0][x[0] > BODY_HU]
        except Exception as e:  # noqa: BLE001 - data check has reported unreadable cases already
            log.debug("foreground intensities: %s skipped (%s)", c["case_id"], e)
            continue
        if v.size:
            values.append(v if v.size <= FOREGROUND_VOXELS else rng.choice(v, FOREGROUND_VOXELS, replace=False))
    if not values:
        return None
    lo, hi = np.percentile(np.concatenate(values), percentiles)
    return float(lo), float(hi)


def fingerprint(source: str, *, full: bool = False, sample: int = QUICK_SAMPLE, workers: int | None = None) -> Fingerprint:
    """Check ``source`` (quick: ``sample`` cases read) and make its fingerprint; CT adds its foreground window."""
    report = check_source(source, full=full, sample=sample, workers=workers)
    try:
        cases = load_source(source).cases
        counts = (sum(1 for c in cases if c.mask), sum(1 for c in cases if c.label is not None))
    except (SourceError, ReadError):
        counts = None  # the report holds the source error
    fp = from_report(report, counts)
    if fp.modality == CT:
        fp.foreground = foreground_percentiles(report.cases)
    return fp


__all__ = ["MR", "Fingerprint", "fingerprint", "foreground_percentiles", "from_report"]
