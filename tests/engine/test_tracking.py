"""Experiment tracking: TensorBoard event files and an MLflow run hold the rows of ``metrics.jsonl``, the
reconstruction figures and evaluation summaries; a sink that cannot start or fails is one warning, never a
crashed run."""

from __future__ import annotations

import json
import logging
from importlib.util import find_spec

import pytest

import medmae
import medmae.engine.tracking as tracking
from helpers import TINY_2D, train_rows
from medmae.config import LoggingConfig
from medmae.engine.logging import MetricsLog
from medmae.engine.tracking import Tracker, open_tracker, summary_scalars, track_summary

HAVE_TB = find_spec("tensorboard") is not None
HAVE_MLFLOW = find_spec("mlflow") is not None
SUMMARY = {"rows": [{"metric": "macro_auroc", "value": 0.71, "ci_low": 0.6, "ci_high": 0.8, "n": 20},
                    {"metric": "auroc", "class": "nodule (small)", "value": 0.65, "ci_low": 0.5, "ci_high": 0.78, "n": 20}],
           "leakage": {"checked": True, "n_overlap": 3}}


def sinks_config(root) -> LoggingConfig:
    return LoggingConfig(tensorboard=HAVE_TB, mlflow_uri=f"file:{root / 'mlruns'}" if HAVE_MLFLOW else None)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A tiny pretraining run with every installed sink: 4 steps, killed, resumed to 6 (checkpoint at step 4)."""
    if not (HAVE_TB or HAVE_MLFLOW):
        pytest.skip("neither tensorboard nor mlflow is installed")
    root = tmp_path_factory.mktemp("tracked")
    cfg = sinks_config(root)
    sets = [f"logging.tensorboard={str(cfg.tensorboard).lower()}", f"logging.mlflow_uri={cfg.mlflow_uri or 'null'}"]
    run = root / "pre"
    medmae.pretrain(preset="demo-2d", run_dir=run, overrides=(*TINY_2D, *sets), max_steps=4)
    first_id = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"] if HAVE_MLFLOW else None
    medmae.pretrain(preset="demo-2d", run_dir=run, overrides=(*TINY_2D, *sets), max_steps=6, resume="auto")
    track_summary(run, cfg, SUMMARY, "eval/test", None)
    return run, cfg, first_id


@pytest.mark.skipif(not HAVE_TB, reason="tensorboard is not installed (pip install 'medmae[tensorboard]')")
def test_tensorboard_events_hold_the_metrics_rows_figures_and_evaluation(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = tracked_run
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    jsonl = [(r["step"], r["loss"]) for r in train_rows(run)]
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6]  # the resumed run replaced nothing twice
    assert losses == [(s, pytest.approx(v, rel=1e-6)) for s, v in jsonl]
    assert "train/lr" in events.Tags()["scalars"] and "train/items_per_s" in events.Tags()["scalars"]
    assert events.Images("reconstruction")[-1].step == 6 and events.Images("reconstruction")[-1].width > 100
    (auroc,) = events.Scalars("eval/test/macro_auroc")
    assert (auroc.step, auroc.value) == (6, pytest.approx(0.71))
    assert events.Scalars("eval/test/auroc/nodule _small_")[0].value == pytest.approx(0.65)
    assert events.Scalars("eval/test/leakage_overlap")[0].value == 3


@pytest.mark.skipif(not HAVE_MLFLOW, reason="mlflow is not installed (pip install 'medmae[mlflow]')")
def test_mlflow_run_holds_metrics_params_figures_and_evaluation(tracked_run):
    from mlflow.tracking import MlflowClient

    run, cfg, first_id = tracked_run
    record = json.loads((run / "tracking.json").read_text())["mlflow"]
    assert record == {"uri": cfg.mlflow_uri, "run_id": first_id}  # the resumed run logs to the same MLflow run
    client = MlflowClient(tracking_uri=cfg.mlflow_uri)
    mlrun = client.get_run(first_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train.batch_size"] == "4" and mlrun.data.params["model.depth"] == "1"
    history = sorted((m.step, m.value) for m in client.get_metric_history(first_id, "train/loss"))
    jsonl = [(r["step"], r["loss"]) for r in train_rows(run)]
    assert [s for s, _ in history][-2:] == [5, 6] and dict(history) == pytest.approx(dict(jsonl))
    assert mlrun.data.metrics["eval/test/macro_auroc"] == pytest.approx(0.71)
    assert mlrun.data.metrics["eval/test/macro_auroc_ci_low"] == pytest.approx(0.6)
    figures = [f.path for f in client.list_artifacts(first_id, "figures")]
    assert any(p.endswith(".png") for p in figures)
    assert "config.yaml" in [f.path for f in client.list_artifacts(first_id)]


def test_summary_scalars_name_class_and_region_and_skip_undefined_intervals():
    summary = {"rows": [{"metric": "dice", "region": "mean", "value": 0.9, "ci_low": None, "ci_high": float("nan")}],
               "leakage": {"checked": False}}
    assert summary_scalars(summary, "eval/test") == {"eval/test/dice/mean": 0.9}
    assert summary_scalars(SUMMARY, "e")["e/auroc/nodule _small_"] == 0.65


class Recorder:
    name = "recorder"

    def __init__(self, fail_at: int | None = None):
        self.calls: list[tuple[dict, int]] = []
        self.fail_at = fail_at

    def scalars(self, values, step):
        if self.fail_at is not None and len(self.calls) + 1 == self.fail_at:
            raise ConnectionError("server went away\nsecond line")
        self.calls.append((dict(values), step))

    def image(self, tag, path, step):
        pass

    def artifact(self, path, folder):
        pass

    def close(self):
        pass


def test_rows_reach_the_sink_with_their_kind_and_a_failing_sink_is_dropped_after_one_warning(tmp_path, caplog):
    good, flaky = Recorder(), Recorder(fail_at=2)
    metrics = MetricsLog(tmp_path, tracker=Tracker([good, flaky]))
    with caplog.at_level(logging.WARNING):
        metrics.write({"step": 1, "epoch": 0, "loss": 0.5, "lr": 0.1, "time_s": 1e9})
        metrics.write({"kind": "probe", "step": 2, "epoch": 1, "knn_auroc": 0.8, "k": 20})
        metrics.write({"step": 3, "epoch": 0, "loss": float("nan"), "lr": 0.1, "skipped": True})
    assert good.calls == [({"train/epoch": 0.0, "train/loss": 0.5, "train/lr": 0.1}, 1),
                          ({"probe/epoch": 1.0, "probe/knn_auroc": 0.8, "probe/k": 20.0}, 2),
                          ({"train/epoch": 0.0, "train/lr": 0.1}, 3)]
    assert flaky.calls == [({"train/epoch": 0.0, "train/loss": 0.5, "train/lr": 0.1}, 1)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["recorder tracking stopped (logging a row failed: server went away); the run goes on, "
                        "metrics.jsonl has everything"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_other_ranks_send_nothing(tmp_path):
    rec = Recorder()
    MetricsLog(tmp_path, enabled=False, tracker=Tracker([rec])).write({"step": 1, "loss": 0.5})
    assert rec.calls == [] and not (tmp_path / "metrics.jsonl").exists()


def test_a_sink_that_cannot_start_is_one_warning_and_the_run_finishes(tmp_path, caplog, monkeypatch):
    def missing(*args, **kwargs):
        raise ImportError("No module named 'tensorboard'")

    monkeypatch.setattr(tracking, "TensorBoardSink", missing)
    with caplog.at_level(logging.WARNING):
        medmae.pretrain(preset="demo-2d", run_dir=tmp_path / "r", overrides=(*TINY_2D, "logging.tensorboard=true"),
                        max_steps=2)
    assert [r["step"] for r in train_rows(tmp_path / "r")] == [1, 2]
    off = [r.getMessage() for r in caplog.records if "tracking" in r.getMessage()]
    assert off == ["tensorboard tracking is off: No module named 'tensorboard' (pip install 'medmae[tensorboard]')"]


@pytest.mark.skipif(not HAVE_MLFLOW, reason="mlflow is not installed")
def test_an_unreachable_mlflow_server_is_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with caplog.at_level(logging.WARNING):
        tracker = open_tracker(tmp_path, LoggingConfig(mlflow_uri="http://127.0.0.1:9"))
    assert tracker.sinks == []
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert message.startswith("mlflow tracking is off: ") and "\n" not in message
    assert not (tmp_path / "tracking.json").exists()
