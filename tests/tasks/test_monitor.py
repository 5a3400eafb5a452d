import json

import numpy as np

from medmae.tasks.monitor import knn_scores
from medmae.tasks.pretrain import pretrain


def test_knn_scores_average_the_labels_of_the_nearest_neighbours():
    train_f = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    query = np.array([[2.0, 0.1], [0.05, 3.0]])  # cosine similarity ignores the norm
    np.testing.assert_allclose(knn_scores(train_f, train_y, query, k=2), [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(knn_scores(train_f, train_y, query, k=4), [[0.5, 0.5], [0.5, 0.5]])


def test_probe_rows_are_logged_every_n_epochs(tmp_path):
    overrides = ["model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.decoder.depth=1",
                 "model.decoder.embed_dim=16", "model.decoder.num_heads=2", "data.synthetic.n=24",
                 "data.synthetic.size=[32,32]", "model.img_size=[32,32]", "train.batch_size=8", "train.epochs=4",
                 "monitor.every=2", "monitor.k=3"]
    run = pretrain(preset="demo-2d", run_dir=tmp_path / "R", overrides=overrides)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in rows if r.get("kind") == "probe"]
    assert [p["epoch"] for p in probes] == [2, 4] and [p["step"] for p in probes] == [6, 12]
    assert all(0.0 <= p["knn_auroc"] <= 1.0 for p in probes)
    assert sum(1 for r in rows if r.get("kind", "train") == "train") == 12  # probe rows are not training rows
    with open(run / "metrics.csv") as f:
        assert len(f.read().splitlines()) == 13
