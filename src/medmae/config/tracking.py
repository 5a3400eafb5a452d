"""The ``logging`` section: experiment tracking sinks (TensorBoard, MLflow) and progress lines off a terminal."""

from __future__ import annotations

from pydantic import Field

from medmae.config.base import Strict


class LoggingConfig(Strict):
    """Where the rows of ``metrics.jsonl`` (and figures, evaluation summaries) also go, and how often a run that is
    not on a terminal prints a progress line."""

    tensorboard: bool = Field(False, description="also write TensorBoard event files to R/tensorboard/ (extra: tensorboard)")
    mlflow_uri: str | None = Field(None, min_length=1, description="MLflow tracking URI (http://host:5000, file:/path/mlruns, databricks); null: off (extra: mlflow)")
    mlflow_experiment: str = Field("medmae", min_length=1, description="MLflow experiment the runs are logged under")
    progress_every_s: float = Field(30.0, ge=0.0, description="seconds between progress lines off a terminal (0: only every train.log_every steps)")
