"""``medmae data pack``: a config's sources preprocessed once into a pack (compressed shards + index), by parts.

``pack_sources`` packs all cases, or part ``i`` of ``n`` (``--part i/n``: a cluster array job); ``merge_packs``
joins finished parts; ``verify_pack`` checks shards and raw files. See ``docs/howto/pretrain-on-a-large-pool.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medmae.config import FinetuneConfig, PretrainConfig, apply_overrides, load_raw, validate
from medmae.data.pack_build import PartPlan, pack_part, split_parts
from medmae.data.pack_merge import VerifyReport, merge_parts, verify_pack
from medmae.data.pack_names import is_pack
from medmae.data.pipeline import resolve_parts
from medmae.errors import ConfigError

log = logging.getLogger(__name__)

_FINETUNE_KEYS = frozenset({"task", "mode", "head", "eval", "init"})
CODECS = ("zstd", "lz4")


@dataclass
class PackResult:
    """What one ``medmae data pack`` did: the pack's manifest (None for a lone part) and the part(s) written."""

    out: Path
    manifest: dict[str, Any] | None
    parts: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, str]]:
        return [f for p in self.parts for f in p["failed"]]


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``"3/16"`` -> (3, 16); ConfigError showing the text when it is not ``i/n`` with 0 <= i < n."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--part must be i/n (e.g. 3/16), got {text!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"--part {text}: needs 0 <= i < n (parts are numbered 0..{n - 1})")
    return i, n


def pack_config(sources: Sequence[str | Path], config: str | Path | None, preset: str | None,
                overrides: Iterable[str]) -> PretrainConfig | FinetuneConfig:
    """The config whose preprocessing contract the pack follows; ``sources`` replace its data.path / sources."""
    raw, label = load_raw(config, preset)
    if sources:
        data = {k: v for k, v in (raw.get("data") or {}).items() if k not in ("path", "sources")}
        data.update({"path": str(sources[0])} if len(sources) == 1 else {"sources": [{"path": str(s)} for s in sources]})
        raw = {**raw, "data": data}
    cls = FinetuneConfig if _FINETUNE_KEYS & set(raw) else PretrainConfig
    return validate(cls, apply_overrides(raw, list(overrides)), label)


def pack_sources(sources: Sequence[str | Path] = (), config: str | Path | None = None, *, out: str | Path,
                 preset: str | None = None, overrides: Iterable[str] = (), workers: int = 1, part: str | None = None,
                 with_masks: bool | None = None, shard_cases: int | None = None, codec: str = "zstd") -> PackResult:
    """Pack every case of the sources (or part ``i/n`` of them) with the config's preprocessing into ``out``."""
    if codec not in CODECS:
        raise ConfigError(f"--codec must be one of {CODECS}, got {codec!r}")
    i, n = parse_part(part) or (0, 1)
    for s in sources:
        if is_pack(s):
            raise ConfigError(f"{s} is already a pack: give it to pretrain/finetune as --data or in data.sources")
    cfg = pack_config(sources, config, preset, overrides)
    masks = with_masks if with_masks is not None else (isinstance(cfg, FinetuneConfig) and cfg.task == "seg")
    parts = resolve_parts(cfg.data, cfg.model)
    prep = parts[0].prep
    for k, p in enumerate(parts[1:], 1):
        if p.prep != prep:
            raise ConfigError(f"data.sources[{k}] ({p.name}) has other preprocessing than data.sources[0] (its "
                              "intensity preset); pack each into its own pack and list the packs in data.sources")
    cases = [replace(c, source=c.source or p.name) for p in parts for c in p.spec.cases]
    if not cases:
        raise ConfigError(f"no cases to pack in {[p.name for p in parts]}")
    lo, hi = split_parts(len(cases), n)[i]
    volumes = prep.spatial_dims == 3 or prep.slice_axis is not None
    plan = PartPlan(cases[lo:hi], lo, i, n, prep, masks, codec, shard_cases or (16 if volumes else 1024),
                    meta=source_meta(parts))
    out = Path(out)
    log.info("packing %d of %d cases (part %d/%d) into %s with %d worker(s)", hi - lo, len(cases), i, n, out, workers)
    done = pack_part(plan, out, workers, progress=_progress)
    if part is not None:
        return PackResult(out, None, [done])
    return PackResult(out, merge_parts([out], out), [done])


def source_meta(parts: Sequence[Any]) -> dict[str, Any]:
    """What the sources declare, kept in the pack so that fine-tuning on it sees the same classes and labels."""
    first = parts[0].spec
    return {"sources": [{"name": p.name, "kind": p.spec.kind, "cases": len(p.spec.cases)} for p in parts],
            "classes": list(first.classes), "multilabel": first.multilabel, "modality": first.modality,
            "label_names": {str(k): v for k, v in first.label_names.items()}}


def _progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        log.info("packed %d/%d shards", done, total)


def merge_packs(dirs: Sequence[str | Path], out: str | Path) -> PackResult:
    """Merge the finished parts found in ``dirs`` into the pack ``out``."""
    manifest = merge_parts([Path(d) for d in dirs], Path(out))
    return PackResult(Path(out), manifest, [])


def check_pack(path: str | Path) -> VerifyReport:
    """Full verification of a pack: every shard's sha256, every raw file still present against its packed content."""
    if not is_pack(path):
        raise ConfigError(f"{path}: not a pack (no medmae-pack.json)")
    return verify_pack(Path(path))
