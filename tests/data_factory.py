"""Tiny data files for the data tests: DICOM series (any modality, description), NIfTI volumes, PNG pictures."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, SegmentationStorage, generate_uid

SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage, "SEG": SegmentationStorage}


def dicom_slice(path: Path, pixels_rc: np.ndarray, *, series_uid: str, z: float, modality: str = "CT",
                description: str = "series", patient: str = "P1", series_number: int = 1,
                sop_uid: str | None = None) -> str:
    """One axial slice (uint16, 1 mm pixels) at height ``z`` mm; returns its SOPInstanceUID."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS.get(modality, CTImageStorage)
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.7"
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient
    ds.SeriesNumber = series_number
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.Rows, ds.Columns = pixels_rc.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels_rc.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


def dicom_series(folder: Path, n: int = 6, *, shape: tuple[int, int] = (20, 20), seed: int = 0, uid: str | None = None,
                 prefix: str = "s", sop_uids: list[str] | None = None, **kw) -> tuple[str, list[str]]:
    """``n`` slices 2 mm apart named ``<prefix><k>.dcm``; returns (SeriesInstanceUID, SOPInstanceUIDs)."""
    uid = uid or generate_uid()
    rng = np.random.default_rng(seed)
    sops = [dicom_slice(folder / f"{prefix}{k}.dcm", rng.integers(0, 1000, shape), series_uid=uid, z=2.0 * k,
                        sop_uid=sop_uids[k] if sop_uids else None, **kw) for k in range(n)]
    return uid, sops


def nifti(path: Path, data: np.ndarray, spacing: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([spacing, spacing, spacing, 1.0])), path)
    return path


def nifti_declaring(path: Path, shape: tuple[int, int, int]) -> Path:
    """A small int16 ``.nii`` (or ``.nii.gz``) whose header claims ``shape``."""
    raw = bytearray(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)).to_bytes())
    struct.pack_into("<8h", raw, 40, 3, *shape, 1, 1, 1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


def png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def noise_png(path: Path, size: int = 16, seed: int = 0) -> Path:
    return png(path, np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))
