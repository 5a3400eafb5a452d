"""The ``medmae`` command line (Typer). Every command is a thin wrapper over a Python function of the same name."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from medmae.version import __version__
from medmae.cli_tables import check_summary_table, print_demo, print_evaluation, print_pack, print_pack_verify
from medmae.errors import EXIT_CONFIG, EXIT_DATA, EXIT_ENVIRONMENT, EXIT_INTERRUPTED, MedmaeError, environment_problem
from medmae.run_layout import export_path

app = typer.Typer(
    name="medmae",
    help="Masked-autoencoder pretraining, fine-tuning and evaluation for 2D and 3D medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
log = logging.getLogger("medmae")


def _fail(message: str, code: int) -> typer.Exit:
    """One unwrapped ``error: ...`` line on stderr (paths stay whole and grep-able) and the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _run(fn, *args, **kwargs):
    """Call a task; a user error becomes one clear line and its exit code (:mod:`medmae.errors`), never a traceback."""
    try:
        return fn(*args, **kwargs)
    except MedmaeError as e:
        raise _fail(str(e), e.exit_code) from None
    except OSError as e:
        problem = environment_problem(e)
        if problem is None:
            raise
        raise _fail(str(problem), problem.exit_code) from None
    except MemoryError as e:
        raise _fail(f"out of memory{': ' + str(e) if str(e) else ''} (lower train.batch_size or the image size)",
                    EXIT_ENVIRONMENT) from None
    except KeyboardInterrupt:  # Ctrl-C outside training, or a second one during it
        raise _fail("interrupted (Ctrl-C) without saving the current step; --resume auto continues from the newest "
                    "committed checkpoint", EXIT_INTERRUPTED) from None


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


SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: key.path=value (repeatable).")]
MaxSteps = Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after N optimizer steps (the schedule is fitted to N).")]
Resume = Annotated[Optional[str], typer.Option("--resume", help="'auto' continues the newest valid checkpoint in the run dir; or a checkpoint path.")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads (like train.threads); default: torch's.")]


@app.command()
def demo(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Where the demo writes data and runs.")] = Path("medmae-demo"),
    max_steps: MaxSteps = None,
) -> None:
    """Run the whole pipeline on built-in synthetic chest radiographs (CPU, a few minutes)."""
    from medmae.tasks.demo import demo as run_demo

    s = _run(run_demo, run_dir, max_steps=max_steps)
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
def pretrain(
    config: Annotated[Optional[Path], typer.Argument(help="Config YAML (or use --preset).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset name (see `medmae presets`).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset folder, manifest CSV, dataset.json or a pack (`medmae data pack`); omit for synthetic data.")] = None,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory (created).")] = Path("runs/pretrain"),
    set_: SetOpt = None,
    max_steps: MaxSteps = None,
    resume: Resume = None,
) -> None:
    """Pretrain a masked autoencoder. Also runs under `torchrun --nproc-per-node N -m medmae.cli pretrain ...`."""
    from medmae.tasks.pretrain import pretrain as run

    out = _run(run, config, preset=preset, data=data, run_dir=run_dir, overrides=set_ or [], max_steps=max_steps, resume=resume)
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
        raise _fail(f"--task must be cls or seg, got {task!r}", EXIT_CONFIG)
    out = _run(run, config, task=task, init=init, preset=preset, data=data, run_dir=run_dir, overrides=set_ or [],
               max_steps=max_steps, resume=resume)
    if _is_main_process():
        console.print(f"run directory: {out}   next: medmae evaluate {out}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A fine-tuning run directory.")],
    data: Annotated[Optional[str], typer.Option("--data", help="Evaluate on this dataset instead of the run's own held-out split.")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate (test, val, ...).")] = "test",
    threads: Threads = None,
) -> None:
    """Metrics with bootstrap 95 % CIs -> RUN_DIR/eval/<split>/ (with --data: eval/<data-name>_<split>/) summary.json and per_case.csv."""
    from medmae.tasks.evaluate import evaluate as run

    summary = _run(run, run_dir, data=data, split=split, threads=threads)
    print_evaluation(console, summary)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A fine-tuning run directory.")],
    inputs: Annotated[list[Path], typer.Argument(help="Images to predict.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("predictions"),
    threads: Threads = None,
) -> None:
    """Segmentation masks in each input's geometry (NIfTI/NRRD/PNG), or class probabilities as CSV."""
    from medmae.tasks.predict import predict as run

    written = _run(run, run_dir, inputs, out=out, threads=threads)
    console.print(f"wrote {len(written)} files to {out}")


@app.command()
def sweep(
    task: Annotated[str, typer.Option("--task", help="cls or seg.")],
    init: Annotated[list[str], typer.Option("--init", help="An initialisation (repeatable): 'scratch', a pretraining run dir, an encoder file.")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Sweep directory (cells, results.csv, report).")] = Path("runs/sweep"),
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset whose finetune.<task> section to use.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Fine-tuning config YAML instead of a preset.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Labelled dataset; omit for synthetic data.")] = None,
    fractions: Annotated[str, typer.Option("--fractions", help="Comma-separated label fractions.")] = "0.05,0.1,0.25,0.5,0.8,1.0",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Number of seeds (0..N-1) per cell.")] = 3,
    folds: Annotated[Optional[int], typer.Option("--folds", min=2, help="k-fold cross-validation (patient-level).")] = None,
    set_: SetOpt = None,
    max_steps: MaxSteps = None,
) -> None:
    """Label-efficiency grid: fractions x seeds x initialisations (x folds), resumable; ends with `medmae report`."""
    from medmae.tasks.sweep import sweep as run

    if task not in ("cls", "seg"):
        raise _fail(f"--task must be cls or seg, got {task!r}", EXIT_CONFIG)
    try:
        fracs = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        raise _fail(f"--fractions must be comma-separated numbers, got {fractions!r}", EXIT_CONFIG) from None
    out = _run(run, task=task, inits=init, run_dir=run_dir, preset=preset, config=config, data=data, fractions=fracs,
               seeds=seeds, folds=folds, overrides=set_ or [], max_steps=max_steps)
    console.print(f"sweep results: {out / 'results.csv'}  report: {out / 'report.md'}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A sweep directory.")]) -> None:
    """Aggregate a sweep (mean ± std, CIs, paired comparison with scratch) into report.md / report.html + plots."""
    from medmae.report import write_report

    path = _run(write_report, run_dir)
    console.print(f"report: {path} and {path.with_suffix('.html')}")


# ------------------------------------------------------------------------------------- medmae data ...

data_app = typer.Typer(help="Check datasets, prepare them into the cache, or pack them for large pools.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    sources: Annotated[list[str], typer.Argument(help="Dataset folder, manifest (.csv/.json), dataset.json or MedMNIST .npz; several form a pretraining pool.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full report, every case included, to this JSON file.")] = None,
    full: Annotated[bool, typer.Option("--full/--quick", help="Read every case, or 32 per source (every file is still checked to exist).")] = True,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Threads reading cases.")] = 4,
    show: Annotated[int, typer.Option("--show", min=0, help="Errors and warnings listed here (all are in --json).")] = 20,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Check with a preset's data settings (intensity preset vs modality, series filters, labels).")] = None,
    set_: SetOpt = None,
) -> None:
    """Read every case (images and masks): counts, shapes, spacings, intensities, labels, problems. Exit 1 on errors."""
    from collections import Counter

    from medmae.data.check import check_source
    from medmae.data.check_options import CheckOptions

    options = CheckOptions()
    if preset or set_:  # a config only when asked for (pydantic is not needed otherwise)
        from medmae.config import PretrainConfig, load_config

        cfg = _run(load_config, PretrainConfig, None if preset else {}, preset=preset, overrides=set_ or [])
        options = CheckOptions.from_config(cfg.data)
    report = _run(check_source, sources, full=full, workers=workers, options=options)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(report.to_json())
    console.print(check_summary_table(report.summary))
    for level, findings in (("error", report.errors), ("warning", report.warnings)):
        for f in findings[:show]:  # one unwrapped line each: full paths stay whole and grep-able
            where = f.file or f.source or ""
            message = f.message[len(where):].lstrip(": ") if where and f.message.startswith(where) else f.message
            place = f"{f.case_id}: " if f.case_id else ""
            place += f"{where}: " if where else ""
            console.print(f"{level} [{f.code}] {place}{message}", markup=False, highlight=False, soft_wrap=True)
        if len(findings) > show:
            console.print(f"... and {len(findings) - show} more {level}s (see --json)", highlight=False)
    counts = ", ".join(f"{n} {c}" for c, n in Counter(f.code for f in report.errors + report.warnings).most_common())
    console.print(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s){': ' + counts if counts else ''}"
                  f"{'  report: ' + str(json_out) if json_out else ''}", highlight=False)
    if report.errors:
        raise typer.Exit(EXIT_DATA)


@data_app.command("prepare")
def data_prepare(
    paths: Annotated[Optional[list[str]], typer.Argument(help="SOURCE(s) and/or a CONFIG.yaml; without a source the config's data.path / data.sources are used.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset whose preprocessing contract to use (see `medmae presets`).")] = None,
    set_: SetOpt = None,
    masks: Annotated[Optional[bool], typer.Option("--masks/--no-masks", help="Also cache the masks (default: only for segmentation fine-tuning configs).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Fingerprint JSON path (default: <cache>/fingerprints/<hash>.json).")] = None,
) -> None:
    """Preprocess every case into the cache with a preset's or config's preprocessing and write a fingerprint JSON."""
    from rich.markup import escape

    from medmae.tasks.prepare import prepare_source

    items = paths or []
    configs = [p for p in items if p.lower().endswith((".yaml", ".yml"))]
    if len(configs) > 1:
        raise _fail(f"give at most one config YAML, got {configs}", EXIT_CONFIG)
    sources = [p for p in items if p not in configs]
    result = _run(prepare_source, sources, configs[0] if configs else None, preset=preset, overrides=set_ or [],
                  with_masks=masks, out=out)
    fp = result.fingerprint
    t = Table("source", "kind", "cases", "prepared", "recipe", title=f"prepared into {fp['cache_dir']}")
    t.columns[0].overflow = "fold"
    for src in fp["sources"]:
        r = src["recipe"]
        recipe = f"{r['spatial_dims']}D x{r['in_channels']}ch, {r['intensity']['name']}, spacing {r['spacing']}, resize {r['resize']}"
        t.add_row(escape(src["source"]), src["kind"], str(src["cases"]), str(src["prepared"]), escape(recipe))
    console.print(t)
    for f in result.failed[:20]:
        console.print(f"[red]failed:[/red] {f['error']}", highlight=False)
    console.print(f"fingerprint: {result.path}  (content sha256 {fp['content_sha256'][:16]})", highlight=False)
    if result.failed:
        raise typer.Exit(EXIT_DATA)


@data_app.command("pack")
def data_pack(
    paths: Annotated[Optional[list[str]], typer.Argument(help="SOURCE(s) and/or a CONFIG.yaml; with --merge: part folders; with --verify: the pack.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="The pack folder (parts go to OUT/part-i-of-n/).")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Preset whose preprocessing contract to use.")] = None,
    plan: Annotated[Optional[Path], typer.Option("--plan", help="A plan YAML (a config written by `medmae plan`) whose preprocessing to use.")] = None,
    set_: SetOpt = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes packing shards side by side.")] = 1,
    part: Annotated[Optional[str], typer.Option("--part", help="Pack only part i of n (i/n, 0-based): one task of a cluster array job; then --merge.")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Merge the finished parts in PATHS (folders of parts, or parts) into --out.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Check the pack in PATHS: shard sha256s, raw files against their packed content.")] = False,
    masks: Annotated[Optional[bool], typer.Option("--masks/--no-masks", help="Also pack the masks (default: for segmentation fine-tuning configs).")] = None,
    shard_cases: Annotated[Optional[int], typer.Option("--shard-cases", min=1, help="Cases per shard (default 1024 for 2D images, 16 for volumes).")] = None,
    codec: Annotated[str, typer.Option("--codec", help="zstd (smaller) or lz4 (faster to decode).")] = "zstd",
) -> None:
    """Preprocess sources once into a pack (compressed shards + index) that pretrain/finetune read with --data; in parts on a cluster."""
    from medmae.tasks.pack import check_pack, merge_packs, pack_sources

    items = paths or []
    if verify:
        if len(items) != 1:
            raise _fail("--verify takes one pack folder", EXIT_CONFIG)
        rep = _run(check_pack, items[0])
        print_pack_verify(console, rep)
        if not rep.ok:
            raise typer.Exit(EXIT_DATA)
        return
    if out is None:
        raise _fail("--out DIR is needed", EXIT_CONFIG)
    if merge:
        result = _run(merge_packs, [Path(p) for p in items], out)
    else:
        configs = [p for p in items if p.lower().endswith((".yaml", ".yml"))] + ([str(plan)] if plan else [])
        if len(configs) > 1:
            raise _fail(f"give at most one config YAML or --plan, got {configs}", EXIT_CONFIG)
        sources = [p for p in items if p not in configs]
        result = _run(pack_sources, sources, configs[0] if configs else None, out=out, preset=preset,
                      overrides=set_ or [], workers=workers, part=part, with_masks=masks, shard_cases=shard_cases,
                      codec=codec)
    print_pack(console, result, part)
    if result.failed:
        raise typer.Exit(EXIT_DATA)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
