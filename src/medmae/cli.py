"""The ``medmae`` command line (Typer). Every command is a thin wrapper over a Python function of the same name."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from medmae import __version__

app = typer.Typer(
    name="medmae",
    help="Masked-autoencoder pretraining, fine-tuning and evaluation for 2D and 3D medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
log = logging.getLogger("medmae")

EXIT_CONFIG = 2
EXIT_DATA = 1


def _run(fn, *args, **kwargs):
    """Call a task; known user errors become one clear line and an exit code instead of a traceback."""
    from medmae.config import ConfigError
    from medmae.data.preprocess import CaseError
    from medmae.data.readers import ReadError
    from medmae.data.sources import SourceError
    from medmae.engine.checkpoint import CheckpointError
    from medmae.engine.loop import NonFiniteLossError
    from medmae.export import ExportError
    from medmae.models.convert import ContractError

    try:
        return fn(*args, **kwargs)
    except (ConfigError, CheckpointError, ExportError, ContractError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    except (CaseError, ReadError, SourceError, NonFiniteLossError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(EXIT_DATA) from None


def _version(value: bool) -> None:
    if value:
        console.print(f"medmae {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = None,
) -> None:
    import os

    from medmae.engine.logging import setup_cli_logging

    setup_cli_logging(verbose, int(os.environ.get("RANK", "0")))


SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: key.path=value (repeatable).")]
MaxSteps = Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after N optimizer steps (the schedule is fitted to N).")]
Resume = Annotated[Optional[str], typer.Option("--resume", help="'auto' continues the newest valid checkpoint in the run dir; or a checkpoint path.")]


@app.command()
def demo(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Where the demo writes data and runs.")] = Path("medmae-demo"),
    max_steps: MaxSteps = None,
) -> None:
    """Run the whole pipeline on built-in synthetic chest radiographs (CPU, a few minutes)."""
    from medmae.tasks.demo import demo as run_demo

    s = _run(run_demo, run_dir, max_steps=max_steps)
    t = Table(title="MAE pretraining on synthetic chest X-rays (labels unused)", show_header=False)
    t.add_row("steps", str(s["pretrain_steps"]))
    t.add_row("masked-patch loss, fixed cases and masks", f"{s['masked_patch_loss']:.4f}")
    t.add_row("loss of predicting each patch's own mean", f"{s['patch_mean_baseline_loss']:.4f}")
    console.print(t)
    c = Table("task", "init", "metric", "value", "95 % CI", "test cases",
              title=f"fine-tuned on {s['label_fraction']:.0%} of the training labels, same held-out split")
    for r in s["comparison"]:
        c.add_row(r["task"], r["init"], r["metric"], f"{r['value']:.3f}", f"{r['ci_low']:.3f} - {r['ci_high']:.3f}", str(r["n_test"]))
    console.print(c)
    console.print(f"encoder: {s['encoder']}\nreconstructions: {s['figure']}\nruns: {Path(s['pretrain_dir']).parent}"
                  f"\ntime: {s['seconds']:.0f} s (pretraining {s['pretrain_seconds']:.0f} s)")


@app.command()
def presets() -> None:
    """List the presets shipped with medmae and the paper each follows."""
    from medmae.config import PretrainConfig, load_config, preset_names

    t = Table("preset", "dims", "model", "input", "mask", "source")
    t.columns[0].no_wrap = True
    for name in preset_names():
        c = load_config(PretrainConfig, preset=name)
        m = c.model
        t.add_row(name, f"{m.spatial_dims}D", f"{m.arch} {m.size or m.dims} /{m.patch}",
                  "x".join(map(str, m.img_size)) + f" x{m.in_channels}ch", f"{c.mask.kind} {c.mask.ratio}", c.paper or "")
    console.print(t)


@app.command()
def pretrain(
    config: Annotated[Optional[Path], typer.Argument(help="Config YAML (or use --preset).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset name (see `medmae presets`).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset folder, manifest CSV or dataset.json; omit for synthetic data.")] = None,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory (created).")] = Path("runs/pretrain"),
    set_: SetOpt = None,
    max_steps: MaxSteps = None,
    resume: Resume = None,
) -> None:
    """Pretrain a masked autoencoder. Also runs under `torchrun --nproc-per-node N -m medmae.cli pretrain ...`."""
    from medmae.tasks.pretrain import pretrain as run

    out = _run(run, config, preset=preset, data=data, run_dir=run_dir, overrides=set_ or [], max_steps=max_steps, resume=resume)
    console.print(f"run directory: {out}  (encoder: {out / 'export' / 'encoder.safetensors'})")


@app.command()
def reconstruct(
    run_dir: Annotated[Path, typer.Argument(help="A pretraining run directory.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files to reconstruct.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for figures (and NIfTI triplets in 3D).")] = Path("reconstructions"),
    mask_ratio: Annotated[Optional[float], typer.Option("--mask-ratio", min=0.0, max=0.99, help="Override the run's mask ratio.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Mask seed.")] = 0,
) -> None:
    """Reconstruct images with a pretrained MAE: original | masked | reconstruction | error."""
    from medmae.tasks.reconstruct import reconstruct as run

    written = _run(run, run_dir, inputs, out=out, mask_ratio=mask_ratio, seed=seed)
    console.print(f"wrote {len(written)} files to {out}")


@app.command()
def finetune(
    config: Annotated[Optional[Path], typer.Argument(help="Fine-tuning config YAML (or use --preset).")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="cls (classification) or seg (segmentation).")] = None,
    init: Annotated[str, typer.Option("--init", help="Pretraining run dir, encoder.safetensors, a timm/MAE ViT checkpoint, or 'scratch'.")] = "scratch",
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset whose finetune.<task> section to use.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Labelled dataset (folder, manifest CSV, dataset.json); omit for synthetic data.")] = None,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory (created).")] = Path("runs/finetune"),
    set_: SetOpt = None,
    max_steps: MaxSteps = None,
    resume: Resume = None,
) -> None:
    """Fine-tune a pretrained encoder (or train from scratch with the identical setup) for classification or segmentation."""
    from medmae.tasks.finetune import finetune as run

    if task not in (None, "cls", "seg"):
        console.print(f"[red]error:[/red] --task must be cls or seg, got {task!r}")
        raise typer.Exit(EXIT_CONFIG)
    out = _run(run, config, task=task, init=init, preset=preset, data=data, run_dir=run_dir, overrides=set_ or [],
               max_steps=max_steps, resume=resume)
    console.print(f"run directory: {out}   next: medmae evaluate {out}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A fine-tuning run directory.")],
    data: Annotated[Optional[str], typer.Option("--data", help="Evaluate on this dataset instead of the run's own held-out split.")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate (test, val, ...).")] = "test",
) -> None:
    """Metrics with bootstrap 95 % CIs -> RUN_DIR/eval/summary.json and per_case.csv."""
    from medmae.tasks.evaluate import evaluate as run

    summary = _run(run, run_dir, data=data, split=split)
    t = Table("metric", "value", "95 % CI", "n", title=f"{summary['task']} on {summary['n_cases']} cases ({summary['split']})")
    for r in sorted(summary["rows"], key=lambda r: (str(r.get("class") or r.get("region") or ""), r["metric"])):
        name = r["metric"] + (f" ({r.get('class') or r.get('region')})" if r.get("class") or r.get("region") else "")
        t.add_row(name, f"{r['value']:.4f}", f"{r['ci_low']:.4f} - {r['ci_high']:.4f}", str(r["n"]))
    console.print(t)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A fine-tuning run directory.")],
    inputs: Annotated[list[Path], typer.Argument(help="Images to predict.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("predictions"),
) -> None:
    """Segmentation masks in each input's geometry (NIfTI/NRRD/PNG), or class probabilities as CSV."""
    from medmae.tasks.predict import predict as run

    written = _run(run, run_dir, inputs, out=out)
    console.print(f"wrote {len(written)} files to {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
