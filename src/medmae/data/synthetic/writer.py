"""Write synthetic datasets in real formats (:func:`write_dataset`): PNG or NIfTI with a ``manifest.csv`` and a
``dataset.json``, byte-identical for identical arguments."""

from __future__ import annotations

import csv
import gzip
import json
import logging
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from PIL import Image

from medmae.data.synthetic.common import check_seed
from medmae.data.synthetic.ct import abdomen_ct
from medmae.data.synthetic.cxr import CXR_ANATOMY_LABELS, CXR_FINDINGS, chest_xray
from medmae.data.synthetic.mr import brain_mr

logger = logging.getLogger(__name__)

SyntheticKind = Literal["cxr", "abdomen_ct", "brain_mr"]
_KINDS: tuple[str, ...] = ("cxr", "abdomen_ct", "brain_mr")


def _subject_ids(n: int) -> list[str]:
    """Subject id per case: the first ~half of the cases come in pairs sharing a subject, the rest alone."""
    paired = (n // 2) // 2 * 2
    ids = [i // 2 for i in range(paired)] + [paired // 2 + j for j in range(n - paired)]
    return [f"sub{s:04d}" for s in ids]


def _jsonable(obj: Any) -> Any:
    """json.dumps fallback for generator kwargs (tuples, numpy scalars/arrays) so they can be recorded."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple, set, frozenset)):
        return list(obj)
    raise TypeError(f"write_dataset: generator argument {obj!r} cannot be recorded in dataset.json")


def _case_seed(seed: int, i: int) -> int:
    """Independent 31-bit generator seed of case i in a dataset written with `seed`."""
    return int(np.random.SeedSequence([int(seed), i]).generate_state(1, np.uint32)[0] >> 1)


def _write_gz(path: Path, payload: bytes) -> None:
    """gzip with mtime=0 and no file name in the header, so equal data give equal bytes."""
    path.write_bytes(gzip.compress(payload, compresslevel=6, mtime=0))


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    _write_gz(path, img.to_bytes())


def _dataset_meta(
    kind: str, n: int, seed: int, kwargs: dict[str, Any],
    channel_names: tuple[str, ...], label_names: dict[int, str],
) -> dict[str, Any]:
    intensity: Any = {
        "cxr": "xray_histeq",
        "abdomen_ct": {"name": "ct_window", "lo": -175, "hi": 250},
        "brain_mr": "mri_zscore_nonzero",
    }[kind]
    return {
        "name": f"synthetic_{kind}",
        "kind": kind,
        "spatial_dims": 2 if kind == "cxr" else 3,
        "modality": {str(i): c for i, c in enumerate(channel_names)},
        "labels": {str(k): v for k, v in label_names.items()},
        "classes": list(CXR_FINDINGS) if kind == "cxr" else [],
        "multilabel": kind == "cxr",
        "intensity": intensity,
        "num_cases": n,
        "seed": seed,
        "generator_kwargs": kwargs,
        "case_seeds": [_case_seed(seed, i) for i in range(n)],
    }


def write_dataset(out_dir: str | Path, kind: SyntheticKind, n: int, seed: int = 0, **kwargs: Any) -> Path:
    """Write n synthetic cases of `kind` to out_dir in real formats; return the manifest.csv path.

    cxr: 8-bit grey PNG images (value = round(255 * image)) in images/, anatomy maps as 8-bit PNG
    with raw values 0/1/2 in masks/, label = present findings joined by '|'. abdomen_ct: int16 HU
    .nii.gz in imagesTr/, uint8 labels in labelsTr/. brain_mr: float32 .nii.gz, 4D (X, Y, Z, C) when
    channels=4 as in MSD BraTS. manifest.csv columns: path,label,mask,subject_id (paths relative to
    out_dir, forward slashes); dataset.json describes labels, classes, modality and the suggested
    intensity preset, and lists case_seeds (case i is generator(case_seeds[i], **kwargs)).
    Identical arguments give byte-identical files.
    """
    if kind not in _KINDS:
        raise ValueError(f"write_dataset: kind must be one of {list(_KINDS)}, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"write_dataset({kind}): n must be a positive int, got {n!r}")
    check_seed(seed, f"write_dataset({kind})")
    out = Path(out_dir)
    image_dir, mask_dir = ("images", "masks") if kind == "cxr" else ("imagesTr", "labelsTr")
    (out / image_dir).mkdir(parents=True, exist_ok=True)
    (out / mask_dir).mkdir(parents=True, exist_ok=True)
    json_kwargs = json.loads(json.dumps(kwargs, default=_jsonable))

    rows = []
    channel_names: tuple[str, ...] = ("XR",)
    label_names: dict[int, str] = CXR_ANATOMY_LABELS
    for i, subject in enumerate(_subject_ids(int(n))):
        stem, case_seed = f"case_{i:04d}", _case_seed(seed, i)
        if kind == "cxr":
            case = chest_xray(case_seed, **kwargs)
            img_rel, mask_rel = f"{image_dir}/{stem}.png", f"{mask_dir}/{stem}.png"
            pixels = np.rint(case.image_chw[0] * 255.0).astype(np.uint8)
            Image.fromarray(pixels).save(out / img_rel, format="PNG")
            Image.fromarray(case.anatomy).save(out / mask_rel, format="PNG")
            label = "|".join(f for f, on in zip(CXR_FINDINGS, case.labels) if on)
        else:
            vol = abdomen_ct(case_seed, **kwargs) if kind == "abdomen_ct" else brain_mr(case_seed, **kwargs)
            channel_names, label_names = vol.channel_names, vol.label_names
            img_rel, mask_rel = f"{image_dir}/{stem}.nii.gz", f"{mask_dir}/{stem}.nii.gz"
            if kind == "abdomen_ct":
                data = np.clip(np.rint(vol.image_cxyz[0]), -1024, 3071).astype(np.int16)
            else:
                xyzc = np.moveaxis(vol.image_cxyz, 0, -1)
                data = np.ascontiguousarray(xyzc[..., 0] if xyzc.shape[-1] == 1 else xyzc, dtype=np.float32)
            _write_nifti(out / img_rel, data, vol.affine)
            _write_nifti(out / mask_rel, vol.label_xyz, vol.affine)
            label = ""
        rows.append((img_rel, label, mask_rel, subject))

    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("path", "label", "mask", "subject_id"))
        writer.writerows(rows)
    meta = _dataset_meta(kind, int(n), int(seed), json_kwargs, channel_names, label_names)
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d synthetic %s cases to %s", n, kind, out)
    return manifest
