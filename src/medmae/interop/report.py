"""What an export did: the strict-load report (missing / unexpected / reshaped keys) and the output-equivalence
check on a random input, printed by the CLI and written as ``report.json`` beside the exported files."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

TOLERANCE = 1e-5  # max |ours - theirs| on a random input for the export to count as equivalent
REPORT_FILE = "report.json"


@dataclass
class ExportReport:
    """The outcome of one export.

    - ``missing``: keys of the target that the export leaves at the target's initialisation (e.g. a decoder that is
      trained in the target library);
    - ``unexpected``: exported keys the target does not have (a strict load fails when there are any);
    - ``reshaped``: keys whose tensors were reshaped or recomputed on the way (e.g. a BatchNorm folded into a head);
    - ``filled``: target keys that no medmae tensor maps to and the forward pass does not use, set to the target's
      own values so that a strict load works (MONAI's unused ``norm_cross_attn``);
    - ``dropped``: medmae tensors the target has no place for, with the reason in ``notes``;
    - ``left_to_target``: keys of the target outside ``strict_module`` (e.g. a UNETR decoder), trained in the target
      library; counted, not listed;
    - ``strict``: the weights loaded with ``load_state_dict(strict=True)`` into ``strict_module`` of the target
      (the whole target when empty): no missing and no unexpected key;
    - ``max_abs_diff``: the largest difference of ``compared`` between medmae and the target on a random input.
    """

    format: str
    target: str
    source: str
    files: list[str] = field(default_factory=list)
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    left_to_target: int = 0
    strict: bool | None = None
    strict_module: str = ""
    compared: str = ""
    input_shape: list[int] = field(default_factory=list)
    max_abs_diff: float | None = None
    tolerance: float = TOLERANCE
    skipped: str | None = None  # why the load and equivalence check did not run (target library not installed)
    notes: list[str] = field(default_factory=list)
    also: list[dict[str, Any]] = field(default_factory=list)  # further files of the export, each with its own check

    @property
    def equivalent(self) -> bool | None:
        return None if self.max_abs_diff is None else self.max_abs_diff <= self.tolerance

    @property
    def ok(self) -> bool:
        """No check failed (a skipped check is not a failure): strict loads and equal outputs, also of ``also``."""
        checks = [self.strict, self.equivalent] + [a.get("strict") for a in self.also] + [
            None if a.get("max_abs_diff") is None else a["max_abs_diff"] <= self.tolerance for a in self.also]
        return all(c is not False for c in checks)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "equivalent": self.equivalent}

    def write(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / REPORT_FILE
        path.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        return path

    def lines(self) -> list[str]:
        """The report as a few human-readable lines (what the CLI prints)."""
        out = [f"{self.format}: {self.source} -> {', '.join(self.files)}  (target {self.target})"]
        if self.skipped:
            out.append(f"load and equivalence check skipped: {self.skipped}")
        else:
            where = f" into {self.strict_module}" if self.strict_module else ""
            out.append(f"strict load{where}: {'ok' if self.strict else 'FAILED'}; {self.loaded} tensors loaded, "
                       f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.reshaped)} reshaped")
            if self.left_to_target:
                out.append(f"  {self.left_to_target} tensors outside {self.strict_module} are left to the target's "
                           "initialisation (trained there)")
            for name, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                               ("reshaped", self.reshaped), ("filled", self.filled), ("dropped", self.dropped)):
                if keys:
                    out.append(f"  {name}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
            if self.max_abs_diff is not None:
                verdict = "equal" if self.equivalent else "DIFFERENT"
                out.append(f"outputs {verdict}: max |medmae - target| = {self.max_abs_diff:.2e} on {self.compared}, "
                           f"random input {tuple(self.input_shape)} (tolerance {self.tolerance:g})")
        for a in self.also:
            check = "not checked" if a.get("max_abs_diff") is None else (
                f"strict {'ok' if a['strict'] else 'FAILED'}, {len(a['missing'])} missing, max |medmae - target| = "
                f"{a['max_abs_diff']:.2e} on {a['compared']}")
            out.append(f"also: {a['file']} for {a['target']}: {check}")
        out += [f"note: {n}" for n in self.notes]
        return out


def load_report(report: ExportReport, target: nn.Module, state: dict[str, torch.Tensor], module: str = "") -> None:
    """Load ``state`` into ``target``'s submodule ``module`` ("" the whole target) and record what happened: keys
    it lacks (``unexpected``), keys ``state`` lacks (``missing``), whether that was a strict load, and how many
    tensors of the target lie outside that submodule (``left_to_target``)."""
    part = target.get_submodule(module) if module else target
    result = part.load_state_dict(state, strict=False)
    report.strict_module = module
    report.missing = sorted(result.missing_keys)
    report.unexpected = sorted(result.unexpected_keys)
    report.loaded = len(state) - len(report.unexpected)
    report.strict = not report.missing and not report.unexpected
    report.left_to_target = len(target.state_dict()) - len(part.state_dict())


def max_abs_diff(ours: Callable[[torch.Tensor], torch.Tensor], theirs: Callable[[torch.Tensor], torch.Tensor],
                 x: torch.Tensor, modules: Sequence[nn.Module] = ()) -> float:
    """Largest absolute difference of two functions' outputs on ``x`` (no gradients). With ``modules`` (the models
    both functions run) the check runs in float64: the rounding noise of a deep float32 model then vanishes while a
    wrong key map still shows; the models are put back to float32 after (float32 -> float64 -> float32 is exact)."""
    with torch.no_grad(), in_float64(modules):
        x = x.double() if modules else x
        a, b = ours(x).double(), theirs(x).double()
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: medmae {tuple(a.shape)}, target {tuple(b.shape)}")
    return float((a - b).abs().max())


@contextmanager
def in_float64(modules: Sequence[nn.Module]) -> Iterator[None]:
    """The floating-point parameters and buffers of ``modules`` in float64 inside the block, float32 after."""
    for m in modules:
        m.double()
    try:
        yield
    finally:
        for m in modules:
            m.float()


def random_input(in_channels: int, img_size: Sequence[int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal batch (B, C, *S) for the equivalence check."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_channels, *img_size, generator=g)
