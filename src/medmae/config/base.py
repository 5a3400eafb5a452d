"""What every config section shares: unknown keys and non-finite floats are errors, and cross-key checks
report their problems as one validation error with one ``key: problem`` line each."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Unknown keys and non-finite floats (``.nan``, ``.inf``) are errors in every section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


def refuse(problems: list[str]) -> None:
    """Raise the problems of a cross-key check as one validation error (one line each)."""
    if problems:
        raise ValueError("\n".join(problems))
