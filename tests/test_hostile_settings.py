"""Hostile settings: every value a user can hand ``tltf fit`` (a flag, a recipe, ``FitConfig(...)``) is checked
before any work, and a bad one is one ``error:`` line naming it, exit 2, no traceback, nothing written to --out;
a YAML bomb costs no memory; a run whose loss turns NaN stops with one line and saves no model, keeping the backup
of its last finite epoch for a resume."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import cli

from tltf.errors import TltfError
from tltf.training import FitConfig, Method, fit, register_method
from tltf.training.settings import RECIPE_MAX_BYTES, SettingError, load_recipe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Three classes of 16 x 16 images, 20 each, told apart by where a bright square sits."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20).astype(np.int32)
    x = rng.normal(60, 20, (60, 16, 16, 3))
    for i, c in enumerate(y):
        x[i, 2:8, 1 + 5 * c: 6 + 5 * c] += 150
    path = tmp_path_factory.mktemp("hostile") / "tiny.npz"
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y)
    return path


FAST = ("--backbone", "cnn_small", "--weights", "none", "--image-size", "16", "--batch-size", "16",
        "--augment", "none", "--refit", "off", "--quiet")


def refused(result, *needles, out=None):
    """Exit 2, exactly one ``error:`` line (holding every needle), no traceback, nothing in ``out``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    if out is not None:
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    return lines[0]


# --- flags: each checked before the data is read, named as typed ------------------------------------------------

BAD_FLAGS = [
    (("--epochs", "0"), "--epochs 0: must be at least 1"),
    (("--epochs", "-3"), "--epochs -3: must be at least 1"),
    (("--image-size", "0"), "--image-size 0: too small for cnn_small (minimum 16)"),
    (("--image-size", "100000"), "--image-size 100000: must be at most 4096"),
    (("--lr", "1e9"), "--lr 1e+09: must be at most 10"),
    (("--lr", "nan"), "--lr nan: must be a finite number"),
    (("--lr", "inf"), "--lr inf: must be a finite number"),
    (("--lr", "0"), "--lr 0: must be above 0"),
    (("--learning-rate", "-1"), "--lr -1: must be above 0"),
    (("--batch-size", "0"), "--batch-size 0: must be at least 1"),
    (("--val-split", "1"), "--val-split 1: must be below 1"),
    (("--val-split", "-0.5"), "--val-split -0.5: must be at least 0"),
    (("--val-split", "nan"), "--val-split nan: must be a finite number"),
    (("--dropout", "1"), "--dropout 1: must be below 1"),
    (("--l2sp", "-1"), "--l2sp -1: must be at least 0"),
    (("--lwf", "inf"), "--lwf inf: must be a finite number"),
    (("--lwf-temperature", "0"), "--lwf-temperature 0: must be above 0"),
    (("--lambda-max", "-0.1"), "--lambda-max -0.1: must be at least 0"),
    (("--align-weight", "nan"), "--align-weight nan: must be a finite number"),
    (("--gamma", "-inf"), "--gamma -inf: must be a finite number"),
    (("--reinit-top", "-1"), "--reinit-top -1: must be at least 0"),
    (("--seed", "-1"), "--seed -1: must be at least 0"),
    (("--optimizer", "rmsprop"), "--optimizer rmsprop: unknown (choose from adam, adamw, sgd)"),
    (("--precision", "fp16"), "--precision fp16: choose float32"),
    (("--augment", "zoom"), "--augment zoom: unknown augmentation 'zoom'"),
    (("--ema", "1.5"), "--ema 1.5: must be in (0, 1)"),
]


def test_a_bad_flag_is_one_line_and_nothing_runs(tiny, tmp_path):
    out = tmp_path / "run"  # one test, not one each: Keras' per-test reset costs more than a refusal
    for args, message in BAD_FLAGS:
        refused(cli("fit", "--data", tiny, *FAST, *args, "--out", out), message, out=out)


def test_dry_run_refuses_what_training_would():
    for args, message in BAD_FLAGS:
        refused(cli("fit", "--data", "builtin:shapes", *FAST, *args, "--dry-run"), message)


def test_compare_checks_the_same_settings(tiny, tmp_path):
    out = tmp_path / "cmp"
    for args, message in ((("--epochs", "0"), "--epochs 0: must be at least 1"),
                          (("--lr", "inf"), "--lr inf: must be a finite number"),
                          (("--batch-size", "0"), "--batch-size 0: must be at least 1")):
        refused(cli("compare", "--data", tiny, "--backbone", "cnn_small", "--strategies", "scratch", "--seeds", "1",
                    *args, "--out", out), message, out=out)


# --- recipes: the key named with its file; types checked before --dry-run prints a plan -------------------------

BAD_RECIPE_VALUES = [
    ('image_size: "thirty-two"', "image_size 'thirty-two': must be a whole number"),
    ("data: 12345", "data 12345: must be a string"),
    ("backbone: [cnn_small]", "backbone ['cnn_small']: must be a string"),
    ("epochs: 0", "epochs 0: must be at least 1"),
    ("learning_rate: .nan", "learning_rate nan: must be a finite number"),
    ("learning_rate: 1e9", "learning_rate 1e+09: must be at most 10"),
    ("cache: 'no'", "cache 'no': must be true or false"),
    ("schedule: {batch_size: 2.5}", "batch_size 2.5: must be a whole number"),
    ("method_options: [1, 2]", "method_options [1, 2]: must be a mapping"),
    ("methods: {a: 1}", "methods {'a': 1}: must be a list"),
]


def test_a_bad_recipe_value_names_the_file_and_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    for line, message in BAD_RECIPE_VALUES:
        data = "" if line.startswith("data:") else "data: builtin:shapes\n"
        recipe.write_text(f"{data}backbone: cnn_small\nweights: none\n{line}\n")
        refused(cli("fit", "--config", recipe, "--dry-run"), f"--config {recipe}: {message}")


def test_a_flag_over_a_recipe_is_named_as_a_flag(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: builtin:shapes\nbackbone: cnn_small\nweights: none\nepochs: 3\n")
    refused(cli("fit", "--config", recipe, "--epochs", "0", "--dry-run"), "error: --epochs 0: must be at least 1")
    ok = cli("fit", "--config", recipe, "--lr", "1e-2", "--dry-run")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["config"]["learning_rate"] == 0.01


def test_yaml_numbers_written_without_a_dot_still_work(tmp_path):
    recipe = tmp_path / "r.yaml"  # YAML 1.1 reads 1e-3 as a string: a number for a number setting
    recipe.write_text("data: builtin:shapes\nbackbone: cnn_small\nlearning_rate: 1e-3\nepochs: '4'\n")
    result = cli("fit", "--config", recipe, "--dry-run")
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert config["learning_rate"] == 0.001 and config["epochs"] == 4


def test_yaml_bomb_is_refused_in_bounded_memory(tmp_path):
    from hostile import EXTRA_MB, baseline_mb, run_tltf

    bomb = tmp_path / "bomb.yaml"
    lines = ["data: builtin:shapes", "method_options:", '  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", '
             '"lol", "lol", "lol"]']
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb.write_text("\n".join(lines) + "\n")
    outcome = run_tltf("fit", "--config", bomb, "--dry-run", "--out", tmp_path / "run", timeout=120)
    assert outcome.one_line_error, outcome.stderr[-2000:]
    assert "anchors and aliases" in outcome.stderr and str(bomb) in outcome.stderr
    assert outcome.peak_mb < baseline_mb() + EXTRA_MB, (outcome.peak_mb, baseline_mb())
    assert not (tmp_path / "run").exists()


HOSTILE_RECIPES = [
    (b"data: &d builtin:shapes\ntarget_data: *d\n", "line 1: YAML anchors and aliases (&name, *name) are not allowed"),
    (b"- data\n- builtin:shapes\n", "expected a mapping of fit options, not a list"),
    (b"just text\n", "expected a mapping of fit options, not a string"),
    (b"data: \xff\xfe\n", "not UTF-8 text"),
    (b"data: " + b"[" * 100_000 + b"]" * 100_000, "nested more than 64 levels deep"),
    (b"data:\n" + b"".join(b" " * i + b"- \n" for i in range(1, 1200)), "--config"),
    (b"data: builtin:shapes\n" + b"# padding\n" * (RECIPE_MAX_BYTES // 10 + 1),
     f"larger than {RECIPE_MAX_BYTES // 1024} KiB"),
    (b"data: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
]


def test_a_hostile_recipe_file_is_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    for content, message in HOSTILE_RECIPES:
        recipe.write_bytes(content)
        refused(cli("fit", "--config", recipe, "--dry-run", "--out", tmp_path / "run"), message, out=tmp_path / "run")


def test_load_recipe_reads_no_more_than_its_cap(tmp_path):
    with pytest.raises(TltfError, match="larger than"):
        load_recipe("/dev/zero")
    with pytest.raises(TltfError, match="no such file"):
        load_recipe(tmp_path / "missing.yaml")


# --- the Python API: the same checks ----------------------------------------------------------------------------

def test_fitconfig_checks_its_values():
    for kw, message in ((dict(epochs=0), "FitConfig(epochs=0): must be at least 1"),
                        (dict(learning_rate=float("nan")), "learning_rate=nan): must be a finite number"),
                        (dict(image_size="thirty-two"), "must be a whole number"),
                        (dict(backbone="cnn_small", image_size=8), "too small for cnn_small (minimum 16)"),
                        (dict(data=None), "FitConfig(data=None): must be a string"),
                        (dict(stage="bogus"), "unknown stage plan"),
                        (dict(plan={"stages": []}), "non-empty list under 'stages'")):
        with pytest.raises(SettingError) as info:
            FitConfig(**kw)
        assert message in str(info.value) and "\n" not in str(info.value)
        assert isinstance(info.value, TltfError)
    with pytest.raises(TltfError, match="--epochs 0"):
        FitConfig.from_dict({"epochs": 0}, source="options")
    config = FitConfig(learning_rate=1, epochs=4.0, data=__import__("pathlib").Path("x"), freeze_until=3)
    assert (config.learning_rate, config.epochs, config.data, config.freeze_until) == (1.0, 4, "x", "3")


def test_fit_checks_a_setting_changed_after_creation(tiny, tmp_path):
    config = FitConfig(data=str(tiny), backbone="cnn_small", weights="none", out=str(tmp_path / "run"))
    config.epochs = 0
    with pytest.raises(TltfError, match=r"FitConfig\(epochs=0\): must be at least 1"):
        fit(config, verbose=0)
    assert not (tmp_path / "run").exists()


# --- a loss that turns NaN: one line, no model, the last finite epoch kept ---------------------------------------

POISON = {"from_epoch": None}  # the 0-based epoch from which the loss is NaN; None: never


class PoisonedLoss(Method):
    """A loss term that turns NaN (weights and all) from ``POISON["from_epoch"]`` on: a run that diverges, on cue."""

    name = "test_poisoned_loss"

    def setup(self, run):
        self.poison = tf.Variable(0.0, trainable=False)
        run.add_loss(lambda x, y, y_pred: self.poison * keras.ops.mean(y_pred))

    def callbacks(self, run):
        method = self

        class Cue(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                start = POISON["from_epoch"]
                method.poison.assign(float("nan") if start is not None and epoch >= start else 0.0)

        return [Cue()]


register_method(PoisonedLoss)


def test_a_nan_loss_stops_saves_no_model_and_keeps_the_last_finite_epoch(tiny, tmp_path):
    out = tmp_path / "run"
    args = ("fit", "--data", tiny, *FAST, "--stage", "scratch", "--epochs", "3", "--method", "test_poisoned_loss",
            "--out", out)
    POISON["from_epoch"] = 1
    try:
        line = refused(cli(*args), "training stopped at epoch 2: the loss became non-finite (loss=nan)", "--lr")
    finally:
        POISON["from_epoch"] = None
    assert "keeps the weights after epoch 1" in line
    assert not (out / "model.keras").exists() and not (out / "metrics.json").exists()
    assert json.loads((out / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    with np.load(out / "backup" / "latest.npz") as f:  # the finite weights of epoch 1, not the NaN ones of epoch 2
        arrays = [f[name] for name in f.files]
    assert arrays and all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f")

    resumed = cli(*args)  # the same command, the loss finite again: resumes from epoch 2 and finishes
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.stdout and "from epoch 2/3" in resumed.stdout
    assert (out / "model.keras").exists() and not (out / "backup").exists()
    history = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
    assert len({row[0] for row in history[1:]}) == 3


def test_a_nan_loss_from_the_python_api_is_refused(tiny, tmp_path):
    POISON["from_epoch"] = 0
    try:
        with pytest.raises(TltfError, match="training stopped at epoch 1: .*no finished epoch to resume from"):
            fit(FitConfig(data=str(tiny), backbone="cnn_small", weights="none", image_size=16, epochs=2,
                          batch_size=16, augment="none", refit="off", tensorboard=False, stage="scratch",
                          methods=["test_poisoned_loss"], out=str(tmp_path / "run")), verbose=0)
    finally:
        POISON["from_epoch"] = None
    assert not (tmp_path / "run" / "model.keras").exists()


def test_a_hostile_plan_file_is_one_line(tmp_path):
    plan = tmp_path / "plan.yaml"
    for content, message in [
        (b"stages: &s [{epochs: 1}]\nmore: *s\n", "YAML anchors and aliases"),
        (b"stages: [{name: head, epochs: 1, unfreeze: 0, learning_rate: .nan}]\n", "learning_rate must be in (0, 10]"),
        (b"stages: [{name: head, epochs: 1, unfreeze: 0, learning_rate: 1.0e+9}]\n", "learning_rate must be in (0, 10]"),
    ]:
        plan.write_bytes(content)
        refused(cli("fit", "--data", "builtin:shapes", "--plan", plan, "--dry-run", "--out", tmp_path / "run"),
                message, out=tmp_path / "run")
