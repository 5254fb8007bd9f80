"""`tltf compare`: the table's numbers are the runs' numbers, runs are reused on resume, negative transfer flagged."""

import json

import numpy as np
import pytest
from conftest import cli

from tltf.compare import STRATEGIES, Strategy, compare, format_markdown, parse_strategies, summarise
from tltf.errors import TltfError

ARGS = dict(backbone="cnn_small", weights="none", strategies="scratch,feature", seeds=2, epochs=2, image_size=32,
            batch_size=32, augment="none")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One real comparison (2 strategies x 2 seeds x 2 epochs, 32 px) through the CLI."""
    out = tmp_path_factory.mktemp("cmp") / "shapes"
    result = cli("compare", "--data", "builtin:shapes", "--backbone", "cnn_small", "--weights", "none",
                 "--strategies", "scratch,feature", "--seeds", "2", "--epochs", "2", "--image-size", "32",
                 "--augment", "none", "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_table_numbers_are_the_run_folders_numbers(compared):
    out, printed = compared
    result = json.loads((out / "compare.json").read_text())
    assert [(r["strategy"], r["seed"]) for r in result["runs"]] == [
        ("scratch", 0), ("feature", 0), ("scratch", 1), ("feature", 1)]
    for run in result["runs"]:
        metrics = json.loads((out / run["run"] / "metrics.json").read_text())
        config = json.loads((out / run["run"] / "config.json").read_text())
        assert run["val_accuracy"] == metrics["val_accuracy"] is not None
        assert run["test_accuracy"] == metrics["test_accuracy"] is not None  # builtin:shapes has a test split
        assert run["trainable_params"] == metrics["stages"][-1]["trainable_params"]
        assert config["seed"] == run["seed"] and config["epochs"] == 2 and config["image_size"] == 32
        assert len(run["val_curve"]) == 2 and run["val_curve"][-1] == pytest.approx(metrics["val_accuracy"])
        if run["strategy"] == "scratch":
            assert config["weights"] == "none" and config["stage"] == "scratch" and config["train_bn_effective"]
        else:
            assert config["stage"] == "feature" and config["weights"] == "none"
    # the split is drawn by (data, val_split, seed): every strategy of a seed asks for the same one
    configs = [json.loads((out / r["run"] / "config.json").read_text()) for r in result["runs"]]
    for seed in (0, 1):
        same = {(c["data"], c["val_split"], c["seed"]) for c in configs if c["seed"] == seed}
        assert len(same) == 1
    assert len({m["num_val"] for m in (json.loads((out / r["run"] / "metrics.json").read_text())
                                       for r in result["runs"])}) == 1

    by_name = {row["strategy"]: row for row in result["summary"]}
    for name in ("scratch", "feature"):
        runs = [r for r in result["runs"] if r["strategy"] == name]
        vals = [r["val_accuracy"] for r in runs]
        assert by_name[name]["val_accuracy_mean"] == pytest.approx(np.mean(vals))
        assert by_name[name]["val_accuracy_sd"] == pytest.approx(np.std(vals, ddof=1))
        assert by_name[name]["test_accuracy_mean"] == pytest.approx(np.mean([r["test_accuracy"] for r in runs]))
        assert by_name[name]["train_seconds_mean"] > 0
    # the frozen random backbone trains only the head: far fewer parameters than scratch
    assert by_name["feature"]["trainable_params"] < by_name["scratch"]["trainable_params"] / 10
    assert result["baseline"] == "scratch" and result["judged_metric"] == "test_accuracy"
    table = (out / "compare.md").read_text()
    row = by_name["scratch"]
    assert f"{row['val_accuracy_mean']:.3f} ± {row['val_accuracy_sd']:.3f}" in table
    assert "| scratch (baseline) |" in printed and "| feature |" in printed
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_resume_reuses_finished_runs_and_retrains_only_missing_ones(compared, monkeypatch):
    import tltf.training

    out, _ = compared
    before = json.loads((out / "compare.json").read_text())
    calls = []
    real_fit = tltf.training.fit

    def counting_fit(config, **kwargs):
        calls.append((config.out, config.seed))
        return real_fit(config, **kwargs)

    monkeypatch.setattr(tltf.training, "fit", counting_fit)
    again = compare("builtin:shapes", out, **ARGS, log=lambda line: None)
    assert calls == [] and all(r["reused"] for r in again["runs"])
    assert [r["val_accuracy"] for r in again["runs"]] == [r["val_accuracy"] for r in before["runs"]]

    # an interrupted comparison: one run folder lost its finished model -> only that run trains again
    missing = out / "runs" / "feature" / "seed1"
    (missing / "model.keras").unlink()
    (missing / "metrics.json").unlink()
    third = compare("builtin:shapes", out, **ARGS, log=lambda line: None)
    assert calls == [(str(missing), 1)]
    assert [r["reused"] for r in third["runs"]] == [True, True, True, False]
    assert third["runs"][3]["val_accuracy"] == json.loads((missing / "metrics.json").read_text())["val_accuracy"]

    # a different budget in the same folder is refused (naming the setting), not silently mixed
    with pytest.raises(TltfError, match="different epochs"):
        compare("builtin:shapes", out, **{**ARGS, "epochs": 3}, log=lambda line: None)


def _runs(strategy, values, test=True):
    return [{"strategy": strategy, "seed": i, "val_accuracy": v, "test_accuracy": v if test else None,
             "train_seconds": 1.0, "trainable_params": 10, "val_curve": [v / 2, v]} for i, v in enumerate(values)]


def test_negative_transfer_is_flagged_with_its_gap():
    runs = _runs("scratch", [0.90, 0.92]) + _runs("feature", [0.70, 0.72]) + _runs("finetune", [0.95, 0.93]) \
        + _runs("gradual", [0.90, 0.91])
    result = summarise(runs, ["scratch", "feature", "finetune", "gradual"], ["scratch"])
    flags = {f["strategy"]: f for f in result["negative_transfer"]}
    assert set(flags) == {"feature", "gradual"}  # finetune is above scratch
    assert flags["feature"]["below_by"] == pytest.approx(0.20) and flags["feature"]["beyond_spread"]
    # gradual: 0.905 vs 0.91, a gap of 0.005 inside the seeds' spread -> flagged, but as weak evidence
    assert flags["gradual"]["below_by"] == pytest.approx(0.005) and not flags["gradual"]["beyond_spread"]
    assert result["summary"][0]["val_curve_mean"] == pytest.approx([0.455, 0.91])
    text = format_markdown({**result, "settings": {"seeds": [0, 1]}})
    assert "**Negative transfer**: feature is below scratch by 0.200 mean test accuracy" in text
    assert "weak evidence" in text

    clean = summarise(_runs("scratch", [0.5, 0.6], test=False) + _runs("feature", [0.8, 0.9], test=False),
                      ["scratch", "feature"], ["scratch"])
    assert clean["judged_metric"] == "val_accuracy" and clean["negative_transfer"] == []
    assert "No negative transfer" in format_markdown(clean)
    alone = summarise(_runs("feature", [0.8]), ["feature"], [])
    assert alone["baseline"] is None and "cannot be judged" in format_markdown(alone)


def test_strategies_map_to_fit_overrides(monkeypatch):
    choices = {c.label: c for c in parse_strategies("scratch,feature,finetune,gradual,l2sp,l2sp:0.5")}
    assert choices["scratch"].overrides() == {"weights": "none", "stage": "scratch", "train_bn": None}
    assert choices["l2sp"].overrides() == {"stage": "finetune", "l2sp": STRATEGIES["l2sp"].default}
    assert choices["l2sp:0.5"].overrides() == {"stage": "finetune", "l2sp": 0.5}
    assert choices["l2sp:0.5"].folder == "l2sp-0.5"
    assert parse_strategies("partial:9")[0].overrides() == {"stage": "finetune", "freeze_until": "9"}
    with pytest.raises(TltfError, match="give partial:VALUE"):
        parse_strategies("partial")
    with pytest.raises(TltfError, match="not a number"):
        parse_strategies("l2sp:strong")
    with pytest.raises(TltfError, match="--strategies bogus: unknown strategy"):
        parse_strategies("scratch,bogus")
    with pytest.raises(TltfError, match="takes no value"):
        parse_strategies("feature:3")
    # a strategy whose fit option this FitConfig lacks fails before any training, naming the option
    monkeypatch.setitem(STRATEGIES, "future", Strategy("future", {"stage": "finetune"}, param="not_a_field"))
    with pytest.raises(TltfError, match="needs the fit option 'not_a_field'"):
        parse_strategies("scratch,future")
    result = cli("compare", "--data", "builtin:shapes", "--strategies", "nope", "--out", "unused")
    assert result.exit_code == 2 and "error: --strategies nope: unknown strategy" in result.stderr
