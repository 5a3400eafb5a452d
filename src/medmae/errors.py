"""User errors and their exit codes: the bottom floor, imported by every other module and by nothing here.

Each class names what the user has to fix; its message is one line that names the file, case or config key.
The CLI maps every :class:`MedmaeError` to its ``exit_code`` in one place (``medmae.cli``); anything else
that escapes is a bug in medmae and keeps its traceback.

Exit codes (also in ``docs/reference/failure-modes.md``):

======  =====================================================================================
0       success
1       data: an image, mask, manifest or dataset that cannot be used as it is
2       configuration, checkpoint, encoder contract, or a run directory that cannot be used
3       environment: disk full, permission denied, out of memory, another process of the run lost
130     interrupted (SIGINT) after saving a checkpoint; ``--resume auto`` continues
143     pre-empted (SIGTERM / SIGUSR1) after saving a checkpoint; ``--resume auto`` continues
======  =====================================================================================
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_DATA = 1
EXIT_CONFIG = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_PREEMPTED = 143  # 128 + SIGTERM


class MedmaeError(Exception):
    """Base of the errors a user can fix; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_CONFIG


class ConfigError(MedmaeError, ValueError):
    """A configuration that cannot be used; the message names the key path."""


class CheckpointError(MedmaeError, RuntimeError):
    """A checkpoint that is missing, incomplete, corrupted or does not fit the model; the message names the path."""


class ExportError(MedmaeError, ValueError):
    """A file that is not a usable medmae encoder export; the message names the file."""


class ContractError(MedmaeError, ValueError):
    """A pretrained encoder that does not fit the fine-tuning data or model; the message names the fields."""


class RunDirError(MedmaeError, RuntimeError):
    """A run directory that cannot be used: not a directory, held by another process, or holding another run."""


class DataError(MedmaeError):
    """Data that cannot be used as it is (exit code 1)."""

    exit_code = EXIT_DATA


class ReadError(DataError, ValueError):
    """Unreadable or invalid medical image; the message always starts with the path."""


class SourceError(DataError, ValueError):
    """A dataset description that cannot be used; the message names the file."""


class CaseError(DataError, RuntimeError):
    """A case that cannot be used; the message starts with the case id and its path."""


class NonFiniteLossError(DataError, RuntimeError):
    """Too many consecutive steps with a non-finite loss, gradient or weights; names the cases and the last good checkpoint."""


class EnvironmentProblem(MedmaeError, OSError):
    """The machine refused: disk full, permission denied, out of memory (exit code 3)."""

    exit_code = EXIT_ENVIRONMENT


class PeerLostError(MedmaeError, RuntimeError):
    """Another process of a torchrun run died or hung (a node lost, killed, out of memory); exit code 3."""

    exit_code = EXIT_ENVIRONMENT


class Interrupted(SystemExit):
    """Raised after the checkpoint that a SIGINT / SIGTERM / SIGUSR1 asked for; exits 130 or 143."""

    def __init__(self, step: int, code: int = EXIT_PREEMPTED):
        super().__init__(code)
        self.step = step


ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def environment_problem(err: OSError, what: str = "") -> EnvironmentProblem | None:
    """An :class:`EnvironmentProblem` for an ``OSError`` the machine caused (disk full, permissions), else None."""
    reason = ENVIRONMENT_ERRNOS.get(err.errno or -1)
    if reason is None:
        return None
    where = err.filename or what
    return EnvironmentProblem(f"{where}: {reason}" if where else reason)
