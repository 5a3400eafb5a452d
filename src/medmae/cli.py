"""The ``medmae`` command line (Typer). Every command is a thin wrapper over a Python function of the same name."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from medmae.version import __version__
from medmae.cli_common import SetOpt, console, fail, run_task
from medmae.cli_data import data_app
from medmae.cli_tables import plan_table, print_demo, print_evaluation, print_probe
from medmae.errors import EXIT_CONFIG
from medmae.run_layout import export_path

app = typer.Typer(
    name="medmae",
    help="Masked-autoencoder pretraining, fine-tuning and evaluation for 2D and 3D medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = logging.getLogger("medmae")


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


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


MaxSteps = Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after N optimizer steps (the schedule is fitted to N).")]
Resume = Annotated[Optional[str], typer.Option("--resume", help="'auto' continues the newest valid checkpoint in the run dir; or a checkpoint path.")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads (like train.threads); default: torch's.")]
PlanOpt = Annotated[Optional[Path], typer.Option("--plan", help="A `medmae plan` file: its settings replace the defaults (give it instead of CONFIG / --preset; --set still applies). Without CONFIG, --preset or --plan the built-in defaults are used (ViT-B/16, 224 px): run `medmae plan` for settings fitted to your data.")]
PretrainPlanOpt = Annotated[Optional[Path], typer.Option("--plan", help="A `medmae plan` file: its top level is the config (give it instead of CONFIG / --preset; --set still applies); one of the three is needed.")]


@app.command()
def demo(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Where the demo writes data and runs.")] = Path("medmae-demo"),
    max_steps: MaxSteps = None,
    budget: Annotated[str, typer.Option("--budget", help="Time of each fine-tuning run (each sweep cell): 25s, 2m; the MAE gets twice it.")] = "25s",
) -> None:
    """Plan, MAE-pretrain and fine-tune on built-in synthetic chest radiographs, against scratch and MONAI's
    BasicUNet (CPU, a few minutes)."""
    from medmae.tasks.demo import demo as run_demo

    s = run_task(run_demo, run_dir, max_steps=max_steps, budget=budget)
    print_demo(console, s)


@app.command()
def presets() -> None:
    """List the presets shipped with medmae and the paper each follows."""
    from medmae.config import PretrainConfig, load_config, preset_names

    t = Table("preset", "dims", "model", "input", "mask", "source")
    t.columns[0].no_wrap = True
    for name in preset_names():
        c = load_config(PretrainConfig, preset=name)
        m = c.model
        size = (m.size or f"{m.dims[0]}x{m.dims[1]}") if m.arch == "vit" else ""
        t.add_row(name, f"{m.spatial_dims}D", f"{m.arch} {size} /{m.patch}",
                  "x".join(map(str, m.img_size)) + f" x{m.in_channels}ch", f"{c.mask.kind} {c.mask.ratio}", c.paper or "")
    console.print(t)


@app.command()
def plan(
    source: Annotated[str, typer.Argument(help="Dataset folder, manifest CSV/JSON, dataset.json, nnU-Net/MSD folder.")],
    task: Annotated[str, typer.Option("--task", help="seg or cls.")],
    budget: Annotated[str, typer.Option("--budget", help="Time of each fine-tuning run (each sweep cell): 90s, 30m, 2h, 1d.")] = "30m",
    pretrain_budget: Annotated[Optional[str], typer.Option("--pretrain-budget", help="Time of the MAE pretraining (default: twice --budget; one MAE serves every fine-tuning run).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda: what the runs will train on (speed measured here when it is this machine's).")] = "cpu",
    family: Annotated[Optional[str], typer.Option("--family", help="resenc (default: ResEnc U-Net CNN / its encoder), vit or swin (2D).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Plan file to write.")] = Path("plan.yaml"),
    full: Annotated[bool, typer.Option("--full/--quick", help="Fingerprint every case, or 32 (default).")] = False,
    memory_gb: Annotated[Optional[float], typer.Option("--memory-gb", min=0.1, help="Memory a run may use (default: 90 % of the GPU's, half the RAM on CPU).")] = None,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 on a GPU, fp32 on a CPU), fp32 or bf16 (on a CPU with AVX512-BF16 or AMX: ~1.5x the steps in a budget, lower Dice per step).")] = "auto",
) -> None:
    """Plan from the data (nnU-Net style): spacing, crop, intensity, network, batch and schedule that fit --device and
    --budget, written as a config for `pretrain --plan`, `finetune --plan` and `sweep --plan`."""
    from medmae.tasks.plan import plan as run

    if task not in ("cls", "seg"):
        raise fail(f"--task must be cls or seg, got {task!r}", EXIT_CONFIG)
    path, result = run_task(run, source, task=task, budget=budget, device=device, family=family, out=out, full=full,
                        memory_gb=memory_gb, pretrain_budget=pretrain_budget, precision=precision)
    console.print(plan_table(path, result))
    console.print(f"next: medmae pretrain --plan {path} --run-dir R   |   medmae finetune --plan {path} --task {task} "
                  f"--init R|scratch|baseline:NAME", highlight=False, soft_wrap=True)


@app.command()
def pretrain(
    config: Annotated[Optional[Path], typer.Argument(help="Config YAML (or use --preset).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset name (see `medmae presets`).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset folder, manifest CSV, dataset.json or a pack (`medmae data pack`); omit for synthetic data.")] = None,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory (created).")] = Path("runs/pretrain"),
    set_: SetOpt = None,
    max_steps: MaxSteps = None,
    resume: Resume = None,
    plan: PretrainPlanOpt = None,
) -> None:
    """Pretrain a masked autoencoder. Also runs under `torchrun --nproc-per-node N -m medmae.cli pretrain ...`.
    With --plan the plan file's top level is the config and it is saved as RUN_DIR/plan.yaml."""
    from medmae.tasks.pretrain import pretrain as run

    out = run_task(run, config, preset=preset, data=data, run_dir=run_dir, overrides=set_ or [], max_steps=max_steps,
               resume=resume, plan=plan)
    if _is_main_process():
        console.print(f"run directory: {out}  (encoder: {export_path(out)})")


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

    written = run_task(run, run_dir, inputs, out=out, mask_ratio=mask_ratio, seed=seed)
    console.print(f"wrote {len(written)} files to {out}")


@app.command()
def finetune(
    config: Annotated[Optional[Path], typer.Argument(help="Fine-tuning config YAML (or use --preset).")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="cls (classification) or seg (segmentation).")] = None,
    init: Annotated[str, typer.Option("--init", help="Pretraining run dir, encoder.safetensors, a timm/MAE ViT checkpoint, 'scratch', or 'baseline:NAME' (a MONAI network from scratch: basicunet, dynunet for seg; densenet121, resnet18 for cls).")] = "scratch",
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset whose finetune.<task> section to use.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Labelled dataset (folder, manifest CSV, dataset.json); omit for synthetic data.")] = None,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory (created).")] = Path("runs/finetune"),
    set_: SetOpt = None,
    max_steps: MaxSteps = None,
    resume: Resume = None,
    plan: PlanOpt = None,
    step_time_from: Annotated[Optional[Path], typer.Option("--step-time-from", help="With train.max_minutes: a fine-tuning run whose measured step time to use where a step costs the same (same network, batch and data), so both runs get the same step count.")] = None,
) -> None:
    """Fine-tune a pretrained encoder (or train from scratch with the identical setup, or a MONAI baseline) for
    classification or segmentation. With --plan: the plan's finetune.<task> settings (task: --task, else the
    plan's), saved as RUN_DIR/plan.yaml. Scratch and baseline runs never apply optim.layer_decay."""
    from medmae.tasks.finetune import finetune as run

    if task not in (None, "cls", "seg"):
        raise fail(f"--task must be cls or seg, got {task!r}", EXIT_CONFIG)
    out = run_task(run, config, task=task, init=init, preset=preset, data=data, run_dir=run_dir, overrides=set_ or [],
               max_steps=max_steps, resume=resume, plan=plan, step_time_from=step_time_from)
    if _is_main_process():
        console.print(f"run directory: {out}   next: medmae evaluate {out}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A fine-tuning run directory.")],
    data: Annotated[Optional[str], typer.Option("--data", help="Evaluate on this dataset instead of the run's own held-out split.")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate (test, val, ...).")] = "test",
    threads: Threads = None,
) -> None:
    """Metrics with bootstrap 95 % CIs -> RUN_DIR/eval/<split>/ (with --data: eval/<data-name>_<split>/) summary.json and per_case.csv.

    Segmentation: Gaussian sliding windows (eval.sw_overlap) and mirror test-time augmentation over data.flip_axes
    (eval.tta; default on for CNN segmentation)."""
    from medmae.tasks.evaluate import evaluate as run

    summary = run_task(run, run_dir, data=data, split=split, threads=threads)
    print_evaluation(console, summary)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A fine-tuning run directory.")],
    inputs: Annotated[list[Path], typer.Argument(help="Images to predict.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("predictions"),
    threads: Threads = None,
) -> None:
    """Segmentation masks in each input's geometry (NIfTI/NRRD; 2D: palette PNG + <name>_overlay.png), or class probabilities as CSV.

    Same inference as evaluate: sliding windows and mirror test-time augmentation as the run's eval.tta says."""
    from medmae.tasks.predict import predict as run

    written = run_task(run, run_dir, inputs, out=out, threads=threads)
    console.print(f"wrote {len(written)} files to {out}")


@app.command()
def sweep(
    task: Annotated[str, typer.Option("--task", help="cls or seg.")],
    init: Annotated[list[str], typer.Option("--init", help="An initialisation (repeatable): 'scratch', a pretraining run dir, an encoder file, 'baseline:NAME' (MONAI basicunet / dynunet / densenet121 / resnet18 from scratch).")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Sweep directory (cells, results.csv, report).")] = Path("runs/sweep"),
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset whose finetune.<task> section to use.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Fine-tuning config YAML instead of a preset.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Labelled dataset; omit for synthetic data.")] = None,
    fractions: Annotated[str, typer.Option("--fractions", help="Comma-separated label fractions.")] = "0.05,0.1,0.25,0.5,0.8,1.0",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Number of seeds (0..N-1) per cell.")] = 3,
    folds: Annotated[Optional[int], typer.Option("--folds", min=2, help="k-fold cross-validation (patient-level).")] = None,
    fold: Annotated[Optional[list[int]], typer.Option("--fold", help="Run only fold K's cells now (repeatable; with --folds); run again for the others.")] = None,
    set_: SetOpt = None,
    max_steps: MaxSteps = None,
    plan: PlanOpt = None,
) -> None:
    """Label-efficiency grid: fractions x seeds x initialisations (x folds), resumable; ends with `medmae report`.
    Baselines (--init baseline:NAME) are arms of their own, compared with every pretrained init in the report."""
    from medmae.tasks.sweep import sweep as run

    if task not in ("cls", "seg"):
        raise fail(f"--task must be cls or seg, got {task!r}", EXIT_CONFIG)
    try:
        fracs = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        raise fail(f"--fractions must be comma-separated numbers, got {fractions!r}", EXIT_CONFIG) from None
    out = run_task(run, task=task, inits=init, run_dir=run_dir, preset=preset, config=config, data=data, fractions=fracs,
               seeds=seeds, folds=folds, overrides=set_ or [], max_steps=max_steps, plan=plan, only_folds=fold)
    console.print(f"sweep results: {out / 'results.csv'}  report: {out / 'report.md'}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A sweep directory.")]) -> None:
    """Aggregate a sweep (mean ± std, CIs, paired comparisons with scratch and with each baseline, cells whose
    pretraining did not learn flagged, leakage check, setup) into report.md / report.html + plots (PNG, SVG, PDF)."""
    from medmae.report import write_report

    path = run_task(write_report, run_dir)
    console.print(f"report: {path} and {path.with_suffix('.html')}")


@app.command("export")
def export_(
    source: Annotated[Path, typer.Argument(help="A pretraining run, an encoder.safetensors, or a fine-tuning run (torchscript, onnx).")],
    to: Annotated[str, typer.Option("--to", help="timm, monai-vit, monai-unetr, monai-swinunetr, nnunet, torchscript or onnx.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (weights, build.json, preprocessing.json, report.json).")],
) -> None:
    """Weights for another library, with a strict-load report and an output-equivalence check (report.json)."""
    from medmae.tasks.export import export as run

    report = run_task(run, source, to=to, out=out)
    for line in report.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if not report.ok:
        raise fail(f"{out}: written, but the check against the target failed (see {out / 'report.json'})", EXIT_CONFIG)


@app.command()
def embed(
    model: Annotated[Path, typer.Argument(help="A pretraining run, an encoder.safetensors or a fine-tuning run.")],
    data: Annotated[str, typer.Argument(help="Dataset folder, manifest (.csv/.json), dataset.json or MedMNIST .npz.")],
    out: Annotated[Path, typer.Option("--out", help="OUT.npy (N x D), with OUT.csv of case ids (and OUT.parquet with pyarrow).")] = Path("embeddings.npy"),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 32,
    threads: Threads = None,
) -> None:
    """One pooled embedding per case (the mean of the encoder's final tokens; a classifier's own pooling)."""
    from medmae.tasks.embed import embed as run

    written = run_task(run, model, data, out=out, batch_size=batch_size, threads=threads)
    console.print("wrote " + ", ".join(map(str, written)), highlight=False, soft_wrap=True)


@app.command()
def probe(
    model: Annotated[Path, typer.Argument(help="A pretraining run, an encoder.safetensors or a fine-tuning run.")],
    data: Annotated[str, typer.Option("--data", help="A labelled dataset (its own train/test split, else a seeded stratified one).")],
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours of the kNN probe (cosine).")] = 20,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Test share when the data has no train/test split.")] = 0.3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of that split and of the bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the 95 % CIs.")] = 1000,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the summary as JSON.")] = None,
    threads: Threads = None,
) -> None:
    """Judge a frozen encoder without fine-tuning: kNN and logistic regression on its embeddings, with evaluate's metrics."""
    from medmae.tasks.probe import probe as run

    s = run_task(run, model, data=data, k=k, test_fraction=test_fraction, seed=seed, bootstrap=bootstrap, out=out,
             threads=threads)
    print_probe(console, s)


app.add_typer(data_app, name="data")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
