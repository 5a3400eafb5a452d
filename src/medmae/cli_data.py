"""``medmae data check | prepare | pack``: checking datasets, preparing them into the cache, packing large pools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from medmae.cli_common import SetOpt, console, fail, run_task
from medmae.cli_tables import print_check, print_pack, print_pack_verify
from medmae.errors import EXIT_CONFIG, EXIT_DATA

data_app = typer.Typer(help="Check datasets, prepare them into the cache, or pack them for large pools.", no_args_is_help=True)


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
    from medmae.data.check import check_source
    from medmae.data.check_options import CheckOptions

    options = CheckOptions()
    if preset or set_:  # a config only when asked for (pydantic is not needed otherwise)
        from medmae.config import PretrainConfig, load_config

        cfg = run_task(load_config, PretrainConfig, None if preset else {}, preset=preset, overrides=set_ or [])
        options = CheckOptions.from_config(cfg.data)
    report = run_task(check_source, sources, full=full, workers=workers, options=options)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(report.to_json())
    print_check(console, report, show, json_out)
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
        raise fail(f"give at most one config YAML, got {configs}", EXIT_CONFIG)
    sources = [p for p in items if p not in configs]
    result = run_task(prepare_source, sources, configs[0] if configs else None, preset=preset, overrides=set_ or [],
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
            raise fail("--verify takes one pack folder", EXIT_CONFIG)
        rep = run_task(check_pack, items[0])
        print_pack_verify(console, rep)
        if not rep.ok:
            raise typer.Exit(EXIT_DATA)
        return
    if out is None:
        raise fail("--out DIR is needed", EXIT_CONFIG)
    if merge:
        result = run_task(merge_packs, [Path(p) for p in items], out)
    else:
        configs = [p for p in items if p.lower().endswith((".yaml", ".yml"))] + ([str(plan)] if plan else [])
        if len(configs) > 1:
            raise fail(f"give at most one config YAML or --plan, got {configs}", EXIT_CONFIG)
        sources = [p for p in items if p not in configs]
        result = run_task(pack_sources, sources, configs[0] if configs else None, out=out, preset=preset,
                      overrides=set_ or [], workers=workers, part=part, with_masks=masks, shard_cases=shard_cases,
                      codec=codec)
    print_pack(console, result, part)
    if result.failed:
        raise typer.Exit(EXIT_DATA)
