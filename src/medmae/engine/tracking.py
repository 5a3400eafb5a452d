"""Experiment tracking: the records of ``metrics.jsonl`` also sent to TensorBoard and MLflow.

Both sinks are optional (``logging.tensorboard``, ``logging.mlflow_uri``) and fed by the same records as the
metrics files: training rows and k-NN probe rows (through :class:`medmae.engine.logging.MetricsLog`),
reconstruction figures, and evaluation summaries (``medmae evaluate``). Only rank 0 tracks. A sink that cannot
start (package missing, server down) or that fails later is one warning and is dropped: tracking never stops a
run. The MLflow run id is kept in ``R/tracking.json`` so that a resumed run and its later evaluations log to
the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from medmae.config import LoggingConfig
from medmae.run_layout import CONFIG_FILE, METRICS_JSONL, TENSORBOARD_DIR, TRACKING_FILE

log = logging.getLogger(__name__)

NOT_SCALARS = frozenset({"step", "time_s", "kind"})
MLFLOW_PARAM_CHUNK = 100  # MLflow takes at most 100 params per batch


class Sink(Protocol):
    name: str

    def scalars(self, values: Mapping[str, float], step: int) -> None: ...

    def image(self, tag: str, path: Path, step: int) -> None: ...

    def artifact(self, path: Path, folder: str) -> None: ...

    def close(self) -> None: ...


def clean_key(key: str) -> str:
    """A metric name both backends accept: letters, digits and ``_-. /`` (class names may hold anything)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


def row_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a ``metrics.jsonl`` row, named ``<kind>/<key>`` (``train/loss``, ``probe/knn_auroc``)."""
    kind = str(row.get("kind", "train"))
    return {clean_key(f"{kind}/{k}"): float(v) for k, v in row.items()
            if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def summary_scalars(summary: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """An evaluation ``summary.json`` as scalars: each row's value and CI bounds, and the leakage count."""
    out: dict[str, float] = {}
    for r in summary.get("rows", []):
        where = r.get("region") or r.get("class") or ""
        key = clean_key(f"{prefix}/{r['metric']}" + (f"/{where}" if where else ""))
        for suffix, field in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            v = r.get(field)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[key + suffix] = float(v)
    leak = summary.get("leakage") or {}
    if leak.get("checked"):
        out[f"{prefix}/leakage_overlap"] = float(leak.get("n_overlap", 0))
    return out


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"train.batch_size": "64", ...}`` (MLflow params are flat strings, at most 500 chars)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flat_params(v, f"{key}."))
        else:
            out[clean_key(key)] = str(v)[:500]
    return out


class TensorBoardSink:
    """Event files under ``R/tensorboard/`` (``tensorboard --logdir R``); a resumed run purges its own stale steps."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, tag: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            self.writer.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")

    def artifact(self, path: Path, folder: str) -> None:
        return None

    def close(self) -> None:
        self.writer.close()


class MlflowSink:
    """One MLflow run per run directory (its id in ``R/tracking.json``), the config as params, figures and
    evaluation summaries as artifacts. ``file:`` URIs are allowed although MLflow 3 deprecates them."""

    name = "mlflow"

    def __init__(self, run_dir: Path, uri: str, experiment: str):
        if uri.startswith("file:") or "://" not in uri and not uri.startswith("databricks"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the user asked for a local store
        from mlflow.tracking import MlflowClient  # needs mlflow or mlflow-skinny

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = self._existing_run(run_dir, uri)
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            run = self.client.create_run(exp_id, run_name=run_dir.resolve().name,
                                         tags={"medmae.run_dir": str(run_dir.resolve())})
            self.run_id = run.info.run_id
            (run_dir / TRACKING_FILE).write_text(json.dumps({"mlflow": {"uri": uri, "run_id": self.run_id}}, indent=1))
            self._log_config(run_dir / CONFIG_FILE)
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def _existing_run(self, run_dir: Path, uri: str) -> str | None:
        """The MLflow run this run directory logged to before (resume, evaluation), if it still exists."""
        path = run_dir / TRACKING_FILE
        if not path.is_file():
            return None
        rec = json.loads(path.read_text()).get("mlflow", {})
        if rec.get("uri") != uri or not rec.get("run_id"):
            return None
        try:
            return self.client.get_run(rec["run_id"]).info.run_id
        except Exception:  # noqa: BLE001 - deleted run, other store: start a new one
            return None

    def _log_config(self, config_path: Path) -> None:
        from mlflow.entities import Param

        if not config_path.is_file():
            return
        config = {k: v for k, v in (yaml.safe_load(config_path.read_text()) or {}).items() if k != "finetune"}
        params = [Param(k, v) for k, v in flat_params(config).items()]  # (a preset's finetune: section is not this run's)
        for i in range(0, len(params), MLFLOW_PARAM_CHUNK):
            self.client.log_batch(self.run_id, params=params[i:i + MLFLOW_PARAM_CHUNK])
        self.client.log_artifact(self.run_id, str(config_path))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def image(self, tag: str, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path), "figures")

    def artifact(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Tracker:
    """Fans records out to the sinks that started; a sink that raises is dropped after one warning."""

    def __init__(self, sinks: Iterable[Sink] = ()):
        self.sinks = list(sinks)

    def _each(self, what: str, call: Callable[[Sink], None]) -> None:
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as e:  # noqa: BLE001 - tracking must never stop a run
                log.warning("%s tracking stopped (%s failed: %s); the run goes on, metrics.jsonl has everything",
                            sink.name, what, str(e).splitlines()[0] if str(e) else type(e).__name__)
                self.sinks.remove(sink)

    def row(self, row: Mapping[str, Any]) -> None:
        """One ``metrics.jsonl`` row (training step, probe)."""
        values = row_scalars(row)
        if values and self.sinks:
            self._each("logging a row", lambda s: s.scalars(values, int(row.get("step", 0))))

    def figure(self, tag: str, path: Path, step: int) -> None:
        self._each("logging a figure", lambda s: s.image(tag, Path(path), step))

    def summary(self, summary: Mapping[str, Any], prefix: str, step: int, path: Path | None = None) -> None:
        """An evaluation summary: its rows as scalars at ``step``, the file itself as an artifact."""
        values = summary_scalars(summary, prefix)
        self._each("logging a summary", lambda s: s.scalars(values, step))
        if path is not None:
            self._each("logging a summary", lambda s: s.artifact(Path(path), prefix))

    def close(self) -> None:
        self._each("closing", lambda s: s.close())
        self.sinks = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_sink(name: str, make: Callable[[], Sink], hint: str) -> Sink | None:
    """Start one sink, or warn once and go on without it."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - ImportError, a refused connection, a bad URI...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        log.warning("%s tracking is off: %s%s", name, reason, hint if isinstance(e, ImportError) else "")
        return None


def open_tracker(run_dir: str | Path, cfg: LoggingConfig, *, start_step: int = 0) -> Tracker:
    """The sinks ``cfg`` asks for, started (call on rank 0 only). ``start_step``: the step a resumed run restarts
    from (TensorBoard drops its events after it)."""
    run_dir = Path(run_dir)
    sinks: list[Sink | None] = []
    if cfg.tensorboard:
        sinks.append(start_sink("tensorboard", lambda: TensorBoardSink(run_dir, start_step + 1 if start_step else None),
                                " (pip install 'medmae[tensorboard]')"))
    if cfg.mlflow_uri:
        uri, experiment = cfg.mlflow_uri, cfg.mlflow_experiment
        sinks.append(start_sink("mlflow", lambda: MlflowSink(run_dir, uri, experiment), " (pip install 'medmae[mlflow]')"))
    return Tracker(s for s in sinks if s is not None)


def last_step(run_dir: Path) -> int:
    """The last step in ``metrics.jsonl`` (0 without one): where an evaluation is placed on the training axis."""
    path = run_dir / METRICS_JSONL
    step = 0
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                step = max(step, int(json.loads(line).get("step", 0)))
            except (json.JSONDecodeError, TypeError, ValueError):
                break
    return step


def track_summary(run_dir: str | Path, cfg: LoggingConfig, summary: Mapping[str, Any], prefix: str,
                  path: Path | None = None) -> None:
    """Send an evaluation summary to the run's sinks (the same MLflow run as its training)."""
    if not (cfg.tensorboard or cfg.mlflow_uri):
        return
    run_dir = Path(run_dir)
    with open_tracker(run_dir, cfg) as tracker:
        tracker.summary(summary, prefix, last_step(run_dir), path)
