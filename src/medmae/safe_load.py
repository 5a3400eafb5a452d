"""What torch's ``torch.load(weights_only=True)`` refusal actually says, without its advice to turn the check off.

Torch wraps the reason (``Trying to load unsupported GLOBAL posix.system whose module posix is blocked``,
``Unsupported global: GLOBAL builtins.exec was not an allowed global ...``, ``Unsupported operand 149``) in
paragraphs that recommend re-running with ``weights_only=False`` -- exactly what medmae must never suggest for a
file that runs code when unpickled. Used by checkpoint loading and by ``--init`` of foreign weights.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_BOILERPLATE = (
    "weights only load failed",
    "weights_only",
    "check the documentation of torch.load",
    "please file an issue",
    "alternatively, to load",
    "do it only if",
)


def _is_advice(line: str) -> bool:
    low = line.lower()
    return any(b in low for b in _BOILERPLATE)


def refusal_reason(err: BaseException) -> str:
    """One short line naming what ``torch.load`` refused (``unsupported GLOBAL posix.system``), never torch's advice."""
    text = _ANSI.sub("", str(err))
    if "WeightsUnpickler error:" in text:
        text = text.rsplit("WeightsUnpickler error:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _is_advice(ln)]
    if not lines:
        return type(err).__name__
    found = _GLOBAL.search(lines[0])
    if found:
        return f"unsupported GLOBAL {found.group(1)}"
    return lines[0].split(". ")[0].rstrip(".")
