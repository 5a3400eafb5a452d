"""The tables and lines ``medmae`` prints after a command: demo results, evaluation metrics, data-check summary and
findings, the plan, the probe."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_demo(console: Console, s: dict[str, Any]) -> None:
    """The planned network, the pretraining numbers and the three arms of ``medmae demo``."""
    t = Table(title="MAE pretraining on synthetic chest X-rays (labels unused)", show_header=False)
    t.add_row("plan", escape(f"{s['network']}, {s['budget']} per sweep cell ({s['plan']})"))
    t.add_row("steps", f"{s['pretrain_steps']} in a {s['pretrain_budget_s']:g} s budget")
    t.add_row("masked loss, fixed cases and masks", f"{s['masked_loss']:.4f}")
    t.add_row("loss of filling each masked block with its mean", f"{s['patch_mean_baseline_loss']:.4f}")
    console.print(t)
    c = Table("labels", "arm", "Dice", "95 % CI", "vs scratch", "95 % CI", "wins", box=box.SIMPLE, padding=(0, 1),
              pad_edge=False, collapse_padding=True,
              title="segmentation (lungs, heart), same held-out images")
    for col in c.columns:
        col.no_wrap = True
    for r in s["comparison"]:
        d = r["vs_scratch"]
        vs = ("-", "-", "-") if d is None else (f"{d['mean_diff']:+.3f}", f"{d['ci_low']:+.3f}, {d['ci_high']:+.3f}",
                                                f"{d['wins']}/{d['n_cases']}")
        c.add_row(f"{r['fraction']:.0%}", r["arm"], f"{r['value']:.3f}", f"{r['ci_low']:.3f}-{r['ci_high']:.3f}", *vs)
    console.print(c)
    console.print("vs scratch: the difference paired over the held-out images; wins: images where the arm is better")
    console.print(f"encoder: {s['encoder']}\nreconstructions: {s['figure']}\nreport: {Path(s['sweep_dir']) / 'report.md'}"
                  f"\ntime: {s['seconds']:.0f} s (plan and pretraining {s['pretrain_seconds']:.0f} s)")


def print_evaluation(console: Console, summary: dict[str, Any]) -> None:
    """The metrics of ``medmae evaluate`` with their CIs, the trivial baseline next to accuracy, the decision rule."""
    t = Table("metric", "value", "95 % CI", "n", title=f"{summary['task']} on {summary['n_cases']} cases ({summary['split']})")
    base = summary.get("accuracy_baseline")
    for r in sorted(summary["rows"], key=lambda r: (str(r.get("class") or r.get("region") or ""), r["metric"])):
        name = r["metric"] + (f" ({r.get('class') or r.get('region')})" if r.get("class") or r.get("region") else "")
        t.add_row(name, f"{r['value']:.4f}", f"{r['ci_low']:.4f} - {r['ci_high']:.4f}", str(r["n"]))
        if base and r["metric"] == "accuracy":
            t.add_row(f"  trivial baseline ({base['rule']})", f"{base['value']:.4f}", "-", str(summary["n_cases"]))
    console.print(t)
    if "threshold" in summary:
        console.print(f"decisions: {summary['decision_rule']}", highlight=False)
    if base and not base["beaten"]:
        console.print(f"note: accuracy {base['accuracy']:.4f} does not beat the trivial baseline ({base['rule']}) "
                      f"of {base['value']:.4f}", highlight=False)


def check_summary_table(s: dict[str, Any]) -> Table:
    """The summary of a :class:`~medmae.data.check.CheckReport` as a two-column table."""
    def nums(values) -> str:
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

    t = Table(show_header=False, title=f"data check ({s['mode']}, {s['seconds']:.1f} s)")
    for src in s["sources"]:
        t.add_row("source", escape(f"{src['path']}  ({src['kind']}, {src['cases']} cases, {src['modality'] or 'modality unknown'})"))
    if len(s["sources"]) > 1 or len(s["pool"]["per_modality"]) > 1:
        t.add_row("per modality", escape(", ".join(f"{m}: {n}" for m, n in s["pool"]["per_modality"].items())))
    c = s["cases"]
    t.add_row("cases", f"{c['total']} ({c['labelled']} labelled, {c['unlabelled']} unlabelled); {c['read']} read, {c['unreadable']} unreadable")
    t.add_row("splits", "; ".join(f"{k}: " + ", ".join(f"{n} {what}" for what, n in v.items() if n) for k, v in s["splits"].items()))
    t.add_row("subjects", str(s["subjects"]))
    t.add_row("dims / channels / dtype", " / ".join(", ".join(f"{k}: {n}" for k, n in s[key].items()) for key in ("spatial_dims", "channels", "dtypes")))
    for key, unit in (("shape", ""), ("spacing", " mm")):
        for dims, st in s[key].items():
            t.add_row(f"{key} {dims}D{unit}", f"min {nums(st['min'])}  median {nums(st['median'])}  max {nums(st['max'])}")
    for ch in s["intensity"]:
        t.add_row(f"intensity ch{ch['channel']}", f"min {ch['min']:.4g}  p1 {ch['p1']:.4g}  p50 {ch['p50']:.4g}  p99 {ch['p99']:.4g}  max {ch['max']:.4g}  (median of per-case percentiles)")
    lab = s["labels"]
    if lab["declared"] or lab["found"]:
        declared = ", ".join(f"{v}={n}" for v, n in lab["declared"].items()) or "none"
        balance = ", ".join(f"{v}: {lab['cases_with'][str(v)]} cases, {lab['voxel_fraction'][str(v)]:.2%} voxels" for v in lab["found"])
        t.add_row("label values", f"found {lab['found']} in {lab['masks_read']} masks; declared {declared}" + (f"\n{balance}" if balance else ""))
    cls = s["classes"]
    if cls["counts"]:
        counts = ", ".join(f"{k}: {n}" for k, n in cls["counts"].items()) + (f", no class: {cls['no_class']}" if cls["no_class"] else "")
        t.add_row("classes" + (" (multi-label)" if cls["multilabel"] else ""), escape(counts))
    return t


def plan_table(path: Path, plan: dict[str, Any]) -> Table:
    """What ``medmae plan`` decided, one row per decision, with the reason where there is one."""
    m = plan["plan"]
    d = m["decisions"]
    t = Table(show_header=False, title=f"plan for {m['task']} ({m['family']}, {m['budget_minutes']:g} min per "
                                       f"fine-tuning run, {plan['train']['max_minutes']:g} min MAE, on {m['device']})"
                                       f" -> {path}")
    t.add_row("spacing", escape(f"{d['spacing']['value']}  ({d['spacing']['why']})"))
    t.add_row("crop", escape(f"{d['crop']['value']}  (median shape {d['crop']['median_shape']}, at most "
                             f"{d['crop']['max_voxels']} voxels)"))
    t.add_row("intensity", escape(f"{d['intensity']['value']}  ({d['intensity']['why']})"))
    t.add_row("channels", escape(f"{d['in_channels']['value']}  ({d['in_channels']['why']})"))
    t.add_row("network", escape(f"{d['network']}, batch {d['batch']}"))
    overhead = d["device"].get("step_overhead_s", 0.0)
    t.add_row("device", escape(f"{d['device']['memory']}; {d['device']['tflops']:.3g} TFLOP/s + {overhead:.3g} s "
                               f"per step ({d['device']['speed']})"))
    measured = f", measured {d['measured_step_s']:.3g} s" if "measured_step_s" in d else ""
    t.add_row("step", f"{d['predicted_step_s']:.3g} s predicted{measured}; {d['predicted_steps']} steps, "
                      f"{d['predicted_epochs']:g} epochs, {d['memory_gib']:g} GiB")
    if "precision" in d:  # plans before the precision decision trained fp32 on a CPU
        t.add_row("precision", escape(f"{d['precision']['value']}  ({d['precision']['why']})"))
    if "optimizer" in d:
        t.add_row("optimizer", escape(d["optimizer"]))
    if d.get("label_map"):
        t.add_row("label map", escape(str(d["label_map"])))
    for w in m.get("warnings", []):
        t.add_row("warning", escape(w))
    return t


def print_check(console: Console, report: Any, show: int, json_out: Path | None) -> None:
    """``medmae data check``: the summary table, up to ``show`` errors and warnings (one unwrapped line each: full
    paths stay whole and grep-able) and the counts per finding code."""
    console.print(check_summary_table(report.summary))
    for level, findings in (("error", report.errors), ("warning", report.warnings)):
        for f in findings[:show]:
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


def print_probe(console: Console, s: dict[str, Any]) -> None:
    """The metrics of ``medmae probe``: both probes, each metric with its 95 % CI."""
    t = Table("probe", "metric", "value", "95 % CI", title=f"{s['n_train']} train / {s['n_test']} test cases ({s['split']}), "
              f"{s['embedding_dim']}-d embeddings, {s['seconds']} s")
    for name in ("knn", "logistic"):
        for r in s[name]:
            ci = "" if r.get("ci_low") is None else f"{r['ci_low']:.3f}-{r['ci_high']:.3f}"
            t.add_row(name, r["metric"] + (f" ({r['class']})" if r.get("class") else ""), f"{r['value']:.3f}", ci)
    console.print(t)


def print_pack(console: Console, result: Any, part: str | None) -> None:
    """What ``data pack`` wrote: a part (and how to merge), or the pack's counts and size; failed cases."""
    for f in result.failed[:20]:
        console.print(f"failed: {f['error']}", markup=False, highlight=False, soft_wrap=True)
    m, out = result.manifest, result.out
    if m is None:
        console.print(f"part {part} packed into {out}; when every part is done: medmae data pack --merge {out} --out {out}",
                      highlight=False, soft_wrap=True)
        return
    size = sum(s["bytes"] for s in m["shards"])
    console.print(f"pack {out}: {m['n_cases']} cases in {len(m['shards'])} shard(s), {size / 2**20:.1f} MiB, "
                  f"{len(m['failed'])} failed", highlight=False, soft_wrap=True)


def print_pack_verify(console: Console, rep: Any) -> None:
    """``data pack --verify``: damaged shards and changed raw files, one line each, then the counts."""
    lines = [f"damaged shard: {s}" for s in rep.bad_shards] + [f"changed since packing: {f}" for f in rep.changed[:20]]
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"{rep.shards} shard(s), {len(rep.bad_shards)} damaged; {rep.raw_checked} raw case(s) checked, "
                  f"{len(rep.changed)} changed, {len(rep.missing)} no longer there", highlight=False)
