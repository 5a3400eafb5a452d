"""nnU-Net v2 raw layout (``Dataset004_Hippocampus``-style): a ``dataset.json`` with ``channel_names`` and
``file_ending``.

``imagesTr/{case}_{CCCC}{ending}`` channel files become one case whose ``image`` lists the channels in index order;
``labelsTr/{case}{ending}`` is its mask. ``imagesTs`` cases are ``split="unlabelled"`` (``"test"`` when a
``labelsTs`` folder holds their labels). ``labels`` maps names to label values; a region entry (a list of values,
region-based training) declares a union of values: the plain integers name the values, values only seen in
regions are named ``label_<v>``, and :func:`nnunet_regions` gives the regions (the shape of ``eval.regions``).
nnU-Net has no subject ids: ``subject_id`` is the case id. The optional ``dataset`` key (explicit file lists) is
not read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medmae.data.cases import Case, DatasetSpec, read_json
from medmae.data.image import image_suffix
from medmae.errors import SourceError

_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_RASTER_2D = (".png", ".bmp", ".jpg", ".jpeg")


def is_nnunet_json(meta: Mapping[str, Any]) -> bool:
    """An nnU-Net v2 ``dataset.json`` declares ``channel_names`` and ``file_ending``."""
    return "channel_names" in meta and "file_ending" in meta


def nnunet_labels(meta: Mapping[str, Any], where: Path) -> tuple[dict[int, str], dict[str, list[int]]]:
    """``labels`` of an nnU-Net ``dataset.json`` -> (value -> name, region name -> values).

    Regions are only returned when some entry is a list (region-based training); then every non-background
    entry is a region. Values seen only inside regions are named ``label_<v>``.
    """
    labels = meta.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise SourceError(f"{where}: 'labels' must map label names to values, got {labels!r}")
    names: dict[int, str] = {}
    regions: dict[str, list[int]] = {}
    for key, value in labels.items():
        if str(key).lstrip("-").isdigit() and isinstance(value, str):  # MSD style "1": "liver"
            key, value = value, int(key)
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise SourceError(f"{where}: label {key!r} must be an integer or a list of integers, got {value!r}")
        if isinstance(value, list):
            regions[str(key)] = sorted(values)
        else:
            names[int(value)] = str(key)
    if regions:
        for name, value in labels.items():
            if isinstance(value, int) and value != 0:
                regions.setdefault(str(name), [int(value)])
        for v in sorted({v for vs in regions.values() for v in vs} - set(names)):
            names[v] = f"label_{v}"
    return dict(sorted(names.items())), regions


def nnunet_regions(root: str | Path) -> dict[str, list[int]]:
    """Regions declared by an nnU-Net dataset folder (empty for plain integer labels)."""
    where = Path(root) / "dataset.json"
    return nnunet_labels(read_json(where), where)[1]


def load_nnunet(root: Path) -> DatasetSpec:
    """nnU-Net v2 raw dataset folder (``Dataset004_Hippocampus``-style): see the module docstring."""
    where = root / "dataset.json"
    meta = read_json(where)
    channels = _nnunet_channels(meta, where)
    ending = str(meta["file_ending"])
    label_names, _ = nnunet_labels(meta, where)
    if not (root / "imagesTr").is_dir():
        raise SourceError(f"{root / 'imagesTr'}: folder not found (nnU-Net layout, {where})")
    cases = _nnunet_cases(root, "imagesTr", "labelsTr", ending, channels, split="train")
    declared = meta.get("numTraining")
    if declared is not None and int(declared) != len(cases):
        raise SourceError(f"{where}: numTraining is {declared}, but {root / 'imagesTr'} holds {len(cases)} cases")
    if (root / "imagesTs").is_dir():
        labelled = (root / "labelsTs").is_dir()
        test = _nnunet_cases(root, "imagesTs", "labelsTs" if labelled else None, ending, channels,
                             split="test" if labelled else "unlabelled")
        clash = sorted({c.case_id for c in cases} & {c.case_id for c in test})
        if clash:
            raise SourceError(f"{root}: case ids {clash[:5]} are in both imagesTr and imagesTs")
        cases += test
    names = list(dict.fromkeys(channels))
    return DatasetSpec(
        root=root,
        cases=cases,
        label_names=label_names,
        spatial_dims=2 if ending.lower() in _RASTER_2D else 3,
        modality="+".join(names),
        kind="nnunet",
    )


def _nnunet_channels(meta: Mapping[str, Any], where: Path) -> list[str]:
    raw = meta.get("channel_names")
    if not isinstance(raw, Mapping) or not raw:
        raise SourceError(f"{where}: 'channel_names' must map channel indices to names, got {raw!r}")
    keys = sorted(raw, key=lambda k: int(k) if str(k).isdigit() else -1)
    if [str(k) for k in keys] != [str(i) for i in range(len(raw))]:
        raise SourceError(f"{where}: channel_names keys must be 0..{len(raw) - 1}, got {list(raw)}")
    return [str(raw[k]) for k in keys]


def _nnunet_cases(root: Path, images: str, labels: str | None, ending: str, channels: list[str], *,
                  split: str) -> list[Case]:
    """Group ``{case}_{CCCC}{ending}`` files by case; every channel and (when ``labels``) the label must exist."""
    image_dir = root / images
    files = sorted(f for f in image_dir.iterdir() if f.is_file() and not f.name.startswith("."))
    groups: dict[str, dict[int, Path]] = {}
    for f in files:
        if not f.name.endswith(ending):
            if image_suffix(f):
                raise SourceError(f"{f}: file ending differs from the declared file_ending {ending!r}")
            continue
        match = _NNUNET_CHANNEL.match(f.name[: -len(ending)])
        if match is None:
            raise SourceError(f"{f}: nnU-Net image names are <case>_<CCCC>{ending} (4-digit channel index)")
        channel = int(match["channel"])
        if channel >= len(channels):
            raise SourceError(f"{f}: channel {channel:04d}, but dataset.json declares {len(channels)} channel(s) {channels}")
        groups.setdefault(match["case"], {})[channel] = f
    label_dir = root / labels if labels else None
    cases = []
    for case_id in sorted(groups):
        found = groups[case_id]
        missing = [i for i in range(len(channels)) if i not in found]
        if missing:
            raise SourceError(f"{image_dir / f'{case_id}_{missing[0]:04d}{ending}'}: missing channel {missing[0]} "
                              f"({channels[missing[0]]}) of case {case_id!r}")
        mask = None
        if label_dir is not None:
            label = label_dir / f"{case_id}{ending}"
            if not label.is_file():
                raise SourceError(f"{label}: label file of case {case_id!r} not found")
            mask = str(label.resolve())
        image = tuple(str(found[i].resolve()) for i in range(len(channels)))
        cases.append(Case(case_id, image, case_id, mask=mask, split=split, source=str(root)))
    if label_dir is not None and label_dir.is_dir():
        orphans = sorted(f for f in label_dir.iterdir()
                         if f.name.endswith(ending) and not f.name.startswith(".") and f.name[: -len(ending)] not in groups)
        if orphans:
            raise SourceError(f"{orphans[0]}: label file without images (no {orphans[0].name[: -len(ending)]}_0000{ending} "
                              f"in {image_dir}); {len(orphans)} such label file(s)")
    return cases
