"""Seeded synthetic medical-like phantoms (medmae's built-in default data) and writers to real formats.

Three generators, each a pure function of its seed and arguments:

- :func:`chest_xray` (:mod:`~medmae.data.synthetic.cxr`) — 2D frontal chest radiograph, values in [0, 1],
  optional findings (:data:`CXR_FINDINGS`) with a multi-hot label, an anatomy label map and a findings mask.
  Shown in radiological convention: the patient's right is on the image's left (column 0),
  so the heart bulges towards high column indices.
- :func:`abdomen_ct` (:mod:`~medmae.data.synthetic.ct`) — 3D abdominal CT in Hounsfield units with organ
  labels (:data:`ABDOMEN_LABELS`).
- :func:`brain_mr` (:mod:`~medmae.data.synthetic.mr`) — 3D head MR (1 or 4 contrasts, arbitrary positive units,
  background exactly 0) with either a BraTS-like tumour (:data:`BRATS_LABELS`) or tissue labels
  (:data:`BRAIN_TISSUE_LABELS`).

Volumes are ``(C, X, Y, Z)`` arrays in RAS voxel order: with the returned affine ``diag(+spacing)``,
increasing x goes to the patient's Right, y to Anterior, z to Superior. The anatomy is laid out in
coordinates normalised to the field of view, so any ``shape`` gives a body that fills the volume.

:func:`write_dataset` (:mod:`~medmae.data.synthetic.writer`) puts ``n`` cases on disk (PNG or NIfTI) with a
``manifest.csv`` and a ``dataset.json`` so the real readers can be exercised end to end. Its output is
byte-identical for identical arguments.
"""

from __future__ import annotations

from medmae.data.synthetic.common import VolumeCase
from medmae.data.synthetic.ct import ABDOMEN_HU, ABDOMEN_LABELS, abdomen_ct
from medmae.data.synthetic.cxr import (
    CXR_ANATOMY_LABELS,
    CXR_FIELD_OF_VIEW_MM,
    CXR_FINDING_PREVALENCE,
    CXR_FINDINGS,
    CXRCase,
    chest_xray,
)
from medmae.data.synthetic.mr import BRAIN_MR_CHANNELS, BRAIN_TISSUE_LABELS, BRATS_LABELS, brain_mr
from medmae.data.synthetic.writer import SyntheticKind, write_dataset

__all__ = ["ABDOMEN_HU", "ABDOMEN_LABELS", "BRAIN_MR_CHANNELS", "BRAIN_TISSUE_LABELS", "BRATS_LABELS",
           "CXR_ANATOMY_LABELS", "CXR_FIELD_OF_VIEW_MM", "CXR_FINDINGS", "CXR_FINDING_PREVALENCE", "CXRCase",
           "SyntheticKind", "VolumeCase", "abdomen_ct", "brain_mr", "chest_xray", "write_dataset"]
