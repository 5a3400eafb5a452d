"""The names of the files in a pack folder (spelled once; no heavy imports, so finding a pack stays cheap)."""

from __future__ import annotations

from pathlib import Path

PACK_FILE = "medmae-pack.json"  # the manifest, written last: a folder with it is a finished pack
INDEX_FILE = "index.npz"  # one row per case
PART_FILE = "part.json"  # a finished part


def is_pack(path: str | Path) -> bool:
    """Whether ``path`` is a finished pack folder."""
    return (Path(path).expanduser() / PACK_FILE).is_file()


def part_dir_name(i: int, n: int) -> str:
    return f"part-{i:05d}-of-{n:05d}"


def shard_name(j: int) -> str:
    return f"shard-{j:05d}.b2z"
