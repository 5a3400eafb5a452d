"""What every ``medmae`` command shares: the console, the one-line failure, running a task, ``--set``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from medmae.engine.distributed import shutdown_distributed
from medmae.errors import EXIT_ENVIRONMENT, EXIT_INTERRUPTED, MedmaeError, environment_problem

console = Console()

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: key.path=value (repeatable). "
                                                     "Tracking: logging.tensorboard=true, logging.mlflow_uri=URI.")]


def fail(message: str, code: int) -> typer.Exit:
    """One unwrapped ``error: ...`` line on stderr (paths stay whole and grep-able) and the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def run_task(fn, *args, **kwargs):
    """Call a task; a user error becomes one clear line and its exit code (:mod:`medmae.errors`), never a traceback."""
    try:
        result = fn(*args, **kwargs)
        shutdown_distributed()  # under torchrun: leave the process group before the interpreter exits
        return result
    except MedmaeError as e:
        raise fail(str(e), e.exit_code) from None
    except OSError as e:
        problem = environment_problem(e)
        if problem is None:
            raise
        raise fail(str(problem), problem.exit_code) from None
    except MemoryError as e:
        raise fail(f"out of memory{': ' + str(e) if str(e) else ''} (lower train.batch_size or the image size)",
                    EXIT_ENVIRONMENT) from None
    except KeyboardInterrupt:  # Ctrl-C outside training, or a second one during it
        raise fail("interrupted (Ctrl-C) without saving the current step; --resume auto continues from the newest "
                    "committed checkpoint", EXIT_INTERRUPTED) from None
