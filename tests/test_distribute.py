"""--distribute: MirroredStrategy over two logical CPU devices trains as well as one device, with the global batch
and learning rate scaled; bad choices are one-line errors."""

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from conftest import cli
from tltf.distribution import Distribution, is_chief, setup
from tltf.errors import TltfError
from tltf.staging import preset

SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import csv
import numpy as np
from tltf.api import FitConfig, fit, load_model
config = FitConfig(**json.loads(sys.argv[1]))
metrics = fit(config, verbose=0)
saved = json.load(open(config.out + "/config.json"))
np.savez(config.out + "/weights.npz", *load_model(config.out + "/model.keras").get_weights())
history = list(csv.DictReader(open(config.out + "/history.csv")))
print("RESULT " + json.dumps({"val_accuracy": metrics["val_accuracy"], "replicas": saved["replicas"],
                             "global_batch": saved["global_batch_size"], "plan": saved["resolved_plan"],
                             **{key: [float(row[key]) for row in history] for key in ("loss", "val_loss")}}))
"""


def _toy_npz(path, n=240, size=24, seed=0):
    """Three classes told apart by where a bright square sits."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, (n, size, size, 3))
    y = np.arange(n) % 3
    for k, (r, c) in enumerate([(2, 2), (2, 14), (14, 8)]):
        x[y == k, r:r + 8, c:c + 8] += 160
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y)
    return path


def _fit_in_subprocess(config: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(config)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _result(proc.stdout)


def _result(stdout: str) -> dict:
    """The JSON a script above printed after ``RESULT ``."""
    line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_converges_like_one_device(tmp_path):
    """Two replicas of 96 images train as one device does with their global batch of 192 and the scaled rate: the
    same loss every epoch, the same validation accuracy and the same weights. Each epoch is one step over the whole
    training set (192 images), so the order tf.data shuffles them in cannot tell the runs apart.

    Measured (8 epochs, 2 CPU cores): the per-epoch losses agree to 1e-7 relative (1.5216106 vs 1.5216107), the
    final weights to 3.1e-6 -- as far as two one-device runs of the same configuration differ from each other
    (3.1e-6: float32 sums in another order); |w| is up to 0.28. A step that counted one replica twice, or a rate
    not scaled, would part them from the first epoch (loss 1.19 -> 1.52 -> 2.60 -> 0.52)."""
    data = str(_toy_npz(tmp_path / "toy.npz"))
    common = dict(data=data, backbone="cnn_small", weights="none", stage="scratch", epochs=8, image_size=24,
                  augment="none", tensorboard=False, dropout=0.0)
    one = _fit_in_subprocess({**common, "batch_size": 192, "learning_rate": 1e-2, "out": str(tmp_path / "one")})
    two = _fit_in_subprocess({**common, "batch_size": 96, "learning_rate": 5e-3, "out": str(tmp_path / "two"),
                              "distribute": "mirrored"})
    assert one["replicas"] == 1 and one["global_batch"] == 192
    assert two["replicas"] == 2 and two["global_batch"] == 192
    assert two["plan"]["stages"][0]["learning_rate"] == pytest.approx(1e-2)  # linear scaling rule: 2 x 5e-3
    assert len(one["loss"]) == len(two["loss"]) == 8 and one["loss"][0] > 1.0  # chance: ln 3 = 1.10
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(two["val_loss"], one["val_loss"], rtol=1e-5, atol=1e-8)
    assert one["val_accuracy"] == two["val_accuracy"] > 0.9, (one, two)  # chance is 1/3
    w1, w2 = np.load(tmp_path / "one" / "weights.npz"), np.load(tmp_path / "two" / "weights.npz")
    assert len(w1.files) == len(w2.files) == 8  # cnn_small's 3 layers and the head, kernels and biases
    for key in w1.files:
        np.testing.assert_allclose(w2[key], w1[key], rtol=0, atol=3e-5, err_msg=key)
    assert max(float(np.abs(w1[key]).max()) for key in w1.files) > 0.1  # the weights are not all near zero


WORKER = """
import json, sys
import keras, numpy as np
from tltf.api import FitConfig, fit

class Weights(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.trainable = [w.numpy() for w in self.model.trainable_weights]

class Interrupt(keras.callbacks.Callback):  # as if the cluster were stopped after the second epoch
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1 and len(sys.argv) > 3:
            raise KeyboardInterrupt

weights = Weights()
config = FitConfig(**json.loads(sys.argv[1]))
try:
    metrics = fit(config, verbose=1, callbacks=[weights, Interrupt()])
except KeyboardInterrupt:
    sys.exit(3)
np.savez(sys.argv[2], *weights.trainable)
print("RESULT " + json.dumps({"val_accuracy": metrics["val_accuracy"],
                             "learning_rates": [s["learning_rate"] for s in metrics["stages"]]}))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multiworker_two_local_workers_train_in_sync(tmp_path):
    """Two ``tltf fit --distribute multiworker`` processes on localhost (TF_CONFIG): they converge, end with the
    same trainable weights (gradients are all-reduced, not trained apart), and only worker 0 writes the run."""
    data = str(_toy_npz(tmp_path / "toy.npz"))
    cluster = {"worker": [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]}
    config = dict(data=data, backbone="cnn_small", weights="none", stage="gradual", epochs=4, image_size=24,
                  batch_size=16, learning_rate=1e-3, augment="none", tensorboard=False, dropout=0.0,
                  distribute="multiworker", out=str(tmp_path / "run"))

    def run_cluster(*extra):
        procs = []
        for index in range(2):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                       TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(config),
                                           str(tmp_path / f"weights{index}.npz"), *extra], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        try:
            streams = [p.communicate(timeout=300) for p in procs]
            return [(p.returncode, *pair) for p, pair in zip(procs, streams)]
        finally:
            for p in procs:
                p.kill()

    stopped = run_cluster("interrupt")
    assert [code for code, _, _ in stopped] == [3, 3], stopped[0][2][-3000:]
    assert (tmp_path / "run" / ".workers" / "worker-1" / "backup").is_dir()  # worker 1's own, not the chief's
    outputs = [(out, err) for _, out, err in run_cluster()]
    for out, err in outputs:
        assert "resuming" in out and "from epoch 3/4" in out, (out[-2000:], err[-3000:])
    results = [_result(out) for out, _ in outputs]
    rates = results[0]["learning_rates"]  # the staged plan ran (unfreezing under the strategy), rates doubled
    assert len(rates) > 1 and rates[0] == pytest.approx(2e-3)
    assert all(r["val_accuracy"] > 0.9 for r in results), results  # chance is 1/3
    w0, w1 = np.load(tmp_path / "weights0.npz"), np.load(tmp_path / "weights1.npz")
    assert len(w0.files) > 0 and all(np.array_equal(w0[k], w1[k]) for k in w0.files)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["replicas"] == 2 and saved["global_batch_size"] == 32
    assert (tmp_path / "run" / "model.keras").exists()
    assert not (tmp_path / "run" / ".workers").exists()  # removed once the run finished


def test_distribution_scaling_and_choices(monkeypatch):
    plan = preset("gradual", 6, 1e-3, 5)

    class Two:
        num_replicas_in_sync = 2

    dist = Distribution("mirrored", Two(), 16)
    assert dist.global_batch == 32
    assert [s.learning_rate for s in dist.scale_plan(plan).stages] == pytest.approx(
        [2 * s.learning_rate for s in plan.stages])
    none = setup("none", 16)
    assert none.replicas == 1 and none.scale_plan(plan) is plan
    with pytest.raises(TltfError, match="--distribute ring: choose none, mirrored, multiworker"):
        setup("ring", 16)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TltfError, match="set TF_CONFIG on every worker"):
        setup("multiworker", 16)
    assert is_chief()
    cluster = {"worker": ["a:1", "b:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not is_chief()
    assert setup("none", 16).run_dir("runs/a") == Path("runs/a")  # TF_CONFIG matters to multiworker only
    assert Distribution("multiworker", None, 16).run_dir("runs/a") == Path("runs/a/.workers/worker-1")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert is_chief()


def test_cli_rejects_unknown_strategy(tmp_path):
    result = cli("fit", "--data", "builtin:shapes", "--distribute", "ring", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "--distribute" in result.output


DANN_STEP = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from tltf.adapt.dann import build_dann
from tltf.models.classifier import build_classifier

rng = np.random.default_rng(0)
xs, xt = (rng.uniform(0, 255, (16, 24, 24, 3)).astype("float32") for _ in range(2))
ys = rng.integers(0, 3, 16)
batch = tf.data.Dataset.from_tensors(((xs, ys), xt))

def one_step(strategy, start=None):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = build_dann(build_classifier("cnn_small", ["a", "b", "c"], 24, "none", dropout=0.0), lambda_=0.5)
        if start is not None:
            model.set_weights(start)
        before = [w.numpy() for w in model.weights]
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(batch, epochs=1, verbose=0, shuffle=False)
    return before, [w.numpy() for w in model.weights]

start, one = one_step(tf.distribute.get_strategy())
_, two = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), start)
changed = [not np.allclose(a, b) for a, b in zip(start, one)]
print("RESULT " + json.dumps({"changed": sum(changed),
                             "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(one, two)),
                             "max_step": max(float(np.abs(a - b).max()) for a, b in zip(start, one))}))
"""


def test_a_dann_step_over_two_replicas_equals_one_on_one_device():
    """--adapt under --distribute: the global batch split over two replicas (8 + 8 source and target images) moves
    the weights as the whole batch on one device does, to 1e-5 (the README's figure), each replica's loss counting
    for its share. Measured: 6e-8 at this step (SGD 0.1, largest move 0.047); 1.3e-7 at SGD 1.0 (move 0.47),
    1.5e-8 at 0.001 -- float32 rounding of weights near 1, whatever the step size. A replica counted twice or
    not at all would miss by about the step itself."""
    proc = subprocess.run([sys.executable, "-c", DANN_STEP], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _result(proc.stdout)
    assert result["changed"] > 4 and result["max_step"] > 1e-3, result  # the step really moved the weights
    assert result["max_diff"] < 1e-5, result
