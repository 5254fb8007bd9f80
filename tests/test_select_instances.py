"""tltf fit --select-instances: train, score, drop the harmful training images, train again (issue 15)."""

import json

import numpy as np
import pytest
from test_engine import _config, blobs

from tltf.errors import TltfError
from tltf.training import fit


def test_select_instances_drops_the_planted_flips_and_trains_on_exactly_the_rest(tmp_path):
    x, y = blobs(240, seed=11)
    rng = np.random.default_rng(0)
    flipped = np.sort(rng.choice(len(y), 24, replace=False))
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 3, len(flipped))) % 3
    path = tmp_path / "noisy.npz"
    np.savez(path, x=x, y=noisy, class_names=np.array(["left", "middle", "right"]))
    metrics = fit(_config(path, tmp_path / "run", epochs=4, select_instances="auto", refit="off",
                          learning_rate=3e-3), verbose=0)
    report = metrics["instances"]
    assert report["scored"] == 192 and 0 < report["dropped"] <= 96  # 240 - 20 % held out; auto drops at most half
    positions = np.array(report["positions"])
    assert len(positions) == report["dropped"] and metrics["num_train"] == 192 - report["dropped"]
    # the flipped images that were scored (those in the training split, not held out) are what was dropped
    from tltf.data import load_data

    train = load_data(str(path), 0.2, 1).train.indices
    flips = set(flipped) & set(train)
    caught = len(set(positions) & flips)
    print(f"dropped {len(positions)}, flips in train {len(flips)}, caught {caught}")
    assert caught >= 0.6 * len(flips) and caught >= 0.6 * len(positions)
    assert report["files"][0].startswith("train[") and (tmp_path / "run" / "selection" / "scores.csv").exists()
    rows = (tmp_path / "run" / "selection" / "scores.csv").read_text().splitlines()
    assert rows[0] == "file,label,predicted,score" and len(rows) == 193
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["select_instances"] == "auto" and saved["selection_final"]["exclude_instances"] == len(positions)
    with pytest.raises(TltfError, match="select_instances='0.9'\\): choose auto"):
        fit(_config(path, tmp_path / "bad", select_instances="0.9"), verbose=0)
