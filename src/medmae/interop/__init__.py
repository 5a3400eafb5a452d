"""Export formats for other libraries (floor 6): a medmae encoder or fine-tuned model as weights that load into
timm, MONAI, nnU-Net (``dynamic_network_architectures``), TorchScript or ONNX, each with a strict-load report and
an output-equivalence check (:mod:`medmae.interop.report`). ``medmae.tasks.export`` resolves a run directory or an
``encoder.safetensors`` into an :class:`ExportSource` and calls :func:`export_source`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medmae.errors import ConfigError
from medmae.interop.common import ExportSource, output_dir
from medmae.interop.deploy import export_onnx, export_torchscript
from medmae.interop.nnunet import export_nnunet
from medmae.interop.nnunet_full import export_residual_unet
from medmae.interop.report import ExportReport
from medmae.interop.swin import export_monai_swinunetr, export_timm_swin
from medmae.interop.vit import export_monai_unetr, export_monai_vit, export_timm



def _timm(src: ExportSource, out: Path) -> ExportReport:
    """timm's VisionTransformer for a ViT, its SwinTransformer for a Swin encoder."""
    return export_timm_swin(src, out) if src.arch == "swin" else export_timm(src, out)


def _nnunet(src: ExportSource, out: Path) -> ExportReport:
    """The nnssl checkpoint (encoder) and, with a pretrained decoder, the whole U-Net as ``ResidualUNet``."""
    report = export_nnunet(src, out)
    export_residual_unet(src, out, report)
    return report


FORMATS: dict[str, Callable[[ExportSource, Path], ExportReport]] = {
    "timm": _timm,
    "monai-vit": export_monai_vit,
    "monai-unetr": export_monai_unetr,
    "monai-swinunetr": export_monai_swinunetr,
    "nnunet": _nnunet,
    "torchscript": export_torchscript,
    "onnx": export_onnx,
}

__all__ = ["FORMATS", "ExportReport", "ExportSource", "export_source"]


def export_source(src: ExportSource, fmt: str, out: str | Path) -> ExportReport:
    """Write ``src`` in format ``fmt`` into the folder ``out`` with ``report.json`` beside it."""
    if fmt not in FORMATS:
        raise ConfigError(f"--to {fmt!r}: unknown export format; known: {', '.join(FORMATS)}")
    folder = output_dir(out)
    report = FORMATS[fmt](src, folder)
    report.files.append(str(folder / "report.json"))
    report.write(folder)
    return report
