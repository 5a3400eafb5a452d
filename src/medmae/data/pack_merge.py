"""Finishing a pack: parts merged into one index (``--merge``), and checking a pack against its files (``--verify``).

A pack is usable once ``medmae-pack.json`` exists; it is written last, after the index, so a merge that dies
leaves no half pack. Parts inside the output folder are used where they are; parts elsewhere (another node's
scratch) are hard-linked, or copied when the folder is on another file system.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmae.version import __version__
from medmae.data.pack_build import part_listing, raw_digest
from medmae.data.pack_store import (FORMAT, FORMAT_VERSION, INDEX_FILE, PACK_FILE, PART_FILE, PackIndex, save_index,
                                    sha256_file, write_json_atomic)
from medmae.errors import ConfigError, SourceError

log = logging.getLogger(__name__)


def find_parts(dirs: list[Path]) -> list[Path]:
    """The part folders named by ``dirs`` (a part, or a folder of parts); an unfinished part is an error."""
    found: list[Path] = []
    for d in dirs:
        candidates = [d] if (d / PART_FILE).is_file() or d.name.startswith("part-") else sorted(d.glob("part-*-of-*"))
        if not candidates:
            raise ConfigError(f"{d}: no pack parts in it (folders part-i-of-n written by `medmae data pack --part i/n`)")
        for c in candidates:
            if not (c / PART_FILE).is_file():
                raise ConfigError(f"{c}: this part is not finished (no {PART_FILE}); run its `medmae data pack --part` "
                                  "command again, it resumes where it stopped")
            found.append(c)
    return found


def _place(part: Path, out: Path) -> str:
    """The part's folder relative to ``out``: where it is when inside ``out``, else linked or copied there."""
    try:
        return str(part.resolve().relative_to(out.resolve()))
    except ValueError:
        pass
    target = out / part.name
    target.mkdir(parents=True, exist_ok=True)
    for f in part.iterdir():
        dest = target / f.name
        if dest.exists() or f.name.startswith("."):
            continue
        try:
            os.link(f, dest)
        except OSError:
            shutil.copy2(f, dest)
    return part.name


def merge_parts(dirs: list[Path], out: Path) -> dict[str, Any]:
    """Merge finished parts ``0..n-1`` of one packing into the pack ``out``; returns its manifest."""
    parts = [(json.loads((p / PART_FILE).read_text()), p) for p in find_parts(dirs)]
    first = parts[0][0]
    for info, p in parts:
        for key in ("count", "recipe", "with_masks", "codec"):
            if info[key] != first[key]:
                raise ConfigError(f"{p}: part has {key}={info[key]!r}, {parts[0][1]} has {first[key]!r}; "
                                  "parts of one pack come from one `medmae data pack` command")
    by_index = {info["index"]: (info, p) for info, p in parts}
    missing = sorted(set(range(first["count"])) - set(by_index))
    if missing or len(by_index) != len(parts):
        names = [f"{i}/{first['count']}" for i in missing]
        raise ConfigError(f"parts {names} are missing (or a part is given twice)")
    out.mkdir(parents=True, exist_ok=True)
    shards, records, failed = [], [], []
    for i in range(first["count"]):
        info, p = by_index[i]
        rel = _place(p, out)
        failed += info["failed"]
        for shard in info["shards"]:
            rows = part_listing(p, shard)
            if shard["name"] is None:
                continue
            for r in rows:
                r["shard"] = len(shards)
            records += rows
            shards.append({"name": f"{rel}/{shard['name']}", "bytes": shard["bytes"], "sha256": shard["sha256"],
                           "cases": shard["cases"]})
    save_index(out / INDEX_FILE, records)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "medmae_version": __version__,
                "contract": first["contract"], "recipe": first["recipe"], "with_masks": first["with_masks"],
                "codec": first["codec"], "n_cases": len(records), "parts": first["count"], "shards": shards,
                "failed": failed, **(first.get("meta") or {})}
    write_json_atomic(out / PACK_FILE, manifest)
    log.info("pack %s: %d cases in %d shards (%d failed)", out, len(records), len(shards), len(failed))
    return manifest


@dataclass
class VerifyReport:
    """What ``--verify`` found: damaged shards, raw files changed since packing, and raw files no longer there."""

    shards: int = 0
    bad_shards: list[str] = field(default_factory=list)
    raw_checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad_shards and not self.changed


def verify_pack(root: Path) -> VerifyReport:
    """sha256 of every shard against the manifest, and every raw file still present against its packed content."""
    manifest = json.loads((root / PACK_FILE).read_text())
    report = VerifyReport(shards=len(manifest["shards"]))
    for s in manifest["shards"]:
        path = root / s["name"]
        if not path.is_file() or path.stat().st_size != s["bytes"] or sha256_file(path) != s["sha256"]:
            report.bad_shards.append(str(path))
    index = PackIndex.load(root / INDEX_FILE)
    for i in range(len(index)):
        files = index["image"][i].split("\n") + ([index["mask"][i]] if index["mask"][i] and manifest["with_masks"] else [])
        try:
            digest = ",".join(raw_digest(f) for f in files)
        except OSError:
            report.missing.append(files[0])
            continue
        report.raw_checked += 1
        if digest != index["sha256"][i]:
            report.changed.append(files[0])
    return report


def read_manifest(root: Path) -> dict[str, Any]:
    """``medmae-pack.json`` of a pack; SourceError naming the file when it is unreadable or of another format."""
    path = root / PACK_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: cannot read the pack manifest ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise SourceError(f"{path}: not a medmae pack of version {FORMAT_VERSION} "
                          f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})")
    return manifest
