"""Sources: enumerate the cases of a dataset from a folder, a manifest, a ``dataset.json`` or an ``.npz``.

Every layout yields :class:`~medmae.data.cases.Case` records (ids, image path(s), optional class label / mask,
split) inside a :class:`~medmae.data.cases.DatasetSpec` that also carries what the dataset declares
(segmentation label names, class names). :func:`load_source` detects the layout; one module per layout:

- :mod:`~medmae.data.sources.csv_manifest`: CSV manifest;
- :mod:`~medmae.data.sources.msd`: Medical Segmentation Decathlon folder;
- :mod:`~medmae.data.sources.folder`: plain image folders (split and class from folder names);
- :mod:`~medmae.data.sources.nnunet`: nnU-Net v2 raw dataset;
- :mod:`~medmae.data.sources.medmnist`: MedMNIST ``.npz``;
- :mod:`~medmae.data.sources.dicom_tree`: DICOM trees, one case per series;
- :mod:`~medmae.data.sources.json_manifest`: JSON manifest or MONAI datalist.
"""

from __future__ import annotations

from pathlib import Path

from medmae.data.cases import SPLIT_NAMES, Case, DatasetSpec, read_json, strip_suffix
from medmae.data.sources.csv_manifest import load_manifest
from medmae.data.sources.dicom_tree import load_dicom_tree, looks_like_dicom_tree
from medmae.data.sources.folder import load_folder
from medmae.data.sources.json_manifest import load_json_manifest
from medmae.data.sources.medmnist import load_medmnist
from medmae.data.sources.msd import load_msd
from medmae.data.sources.nnunet import is_nnunet_json, load_nnunet, nnunet_regions
from medmae.data.pack_names import is_pack
from medmae.errors import SourceError

__all__ = ["SPLIT_NAMES", "Case", "DatasetSpec", "SourceError", "load_dicom_tree", "load_folder", "load_json_manifest",
           "load_manifest", "load_medmnist", "load_msd", "load_nnunet", "load_source", "looks_like_dicom_tree",
           "nnunet_regions", "strip_suffix"]


def load_source(path: str | Path) -> DatasetSpec:
    """Detect the layout at ``path`` and enumerate its cases.

    - a ``.csv`` file: manifest with columns ``path[,label][,mask][,subject_id][,split][,case_id]``;
    - a ``.npz`` file: MedMNIST arrays (``train_images``, ``train_labels``, ...);
    - a ``.json`` file other than ``dataset.json``: JSON manifest (case list or MONAI datalist);
    - a folder with ``dataset.json`` holding ``channel_names`` and ``file_ending``: nnU-Net v2 raw layout;
    - a folder with ``dataset.json`` holding ``training``: Medical Segmentation Decathlon layout;
    - a folder with ``manifest.csv``: that manifest;
    - a folder whose first DICOM files include two slices of one series: DICOM tree, one case per series;
    - a folder with ``medmae-pack.json``: a pack written by ``medmae data pack`` (:mod:`medmae.data.packed`);
    - any other folder: images found below it; ``train/val/test`` folders give the split and
      class-named sub-folders the class label.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".csv":
            return load_manifest(p)
        if suffix == ".npz":
            return load_medmnist(p)
        if p.name == "dataset.json":
            return load_nnunet(p.parent) if is_nnunet_json(read_json(p)) else load_msd(p.parent)
        if suffix == ".json":
            return load_json_manifest(p)
        raise SourceError(f"{p}: expected a folder, a .csv / .json manifest, a dataset.json or a MedMNIST .npz")
    if is_pack(p):
        from medmae.data.packed import load_pack_source  # blosc2 is imported for packs only (speed)

        return load_pack_source(p)
    ds_json = p / "dataset.json"
    if ds_json.is_file():
        meta = read_json(ds_json)
        if is_nnunet_json(meta):
            return load_nnunet(p)
        if "training" in meta:
            return load_msd(p)
    if (p / "manifest.csv").is_file():
        return load_manifest(p / "manifest.csv")
    if looks_like_dicom_tree(p):
        return load_dicom_tree(p)
    return load_folder(p)
