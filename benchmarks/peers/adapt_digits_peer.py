"""Peer check: ADAPT 0.4.5 (``pip install adapt``, "Awesome Domain Adaptation Python Toolbox") on tltf's digits shift.

Source = 5,000 MNIST digits (labelled), target = 1,797 UCI optical digits (labels used ONLY to score), "raw"
variant: each UCI 8x8 digit resized with PIL bilinear to 32x32 (filling the frame), each MNIST 28x28 digit resized
with PIL bilinear to 32x32; pixels scaled to [0, 1]; one grey channel.

Model (DANN paper's digit CNN): encoder Conv2D(32,5,relu) -> MaxPool2 -> Conv2D(48,5,relu) -> MaxPool2 -> Flatten ->
Dense(100,relu); task Dense(10, softmax); discriminator Dense(100,relu) -> Dense(1,sigmoid). Methods: ADAPT's DANN,
DeepCORAL, MDD and a source-only baseline (ADAPT's ``BaseAdaptDeep``: the same fit loop, data pipeline, encoder and
head, with a plain supervised ``train_step`` on the source batches only). Adam lr 1e-3, batch 64, 10 epochs; every
method gets the same number of optimiser steps (ADAPT pads the smaller domain by repetition:
ceil(5000/64) = 79 steps per epoch).

ADAPT must NOT be installed into tltf's own venv; it lives in a separate peer venv::

    # 1. data, once (needs tltf: run with the repo's venv)
    /work/main/.venv/bin/python benchmarks/peers/adapt_digits_peer.py --prepare      # -> /tmp/peer/digits_raw.npz

    # 2. the peer venv (Python 3.11, CPU): latest TensorFlow + adapt works as is
    python3 -m venv /tmp/peer/venv
    /tmp/peer/venv/bin/pip install adapt==0.4.5 tensorflow    # got tensorflow 2.21.0, keras 3.15.1, scikeras 0.13.0,
                                                               # cvxopt 1.3.3, scikit-learn 1.9.1, numpy 2.4.6
    # also checked, with the same outcome (see the JSON):
    #   tensorflow 2.21 + `pip install tf_keras` (2.21.0), run with TF_USE_LEGACY_KERAS=1
    #   `pip install adapt==0.4.5 "tensorflow==2.15.*"` (2.15.1 exists for py3.11; keras 2.15, numpy 1.26.4)

    # 3. the runs (reads only the .npz; no tltf import); ~30-45 s per run on 2 busy CPU cores, 18 runs
    /tmp/peer/venv/bin/python benchmarks/peers/adapt_digits_peer.py \
        --env-label tf-latest --json benchmarks/peers/adapt_digits_peer.json

Besides ADAPT's methods as shipped, two labelled extras: ``dann_schedule`` (ADAPT's DANN with its own
``UpdateLambda`` ramp) and ``deepcoral_patched`` (ADAPT's DeepCORAL with the encoder gradient fixed, see
:func:`_patched_deepcoral`); ``NOTES`` below says exactly what each method is.

``--methods``, ``--seeds`` and ``--epochs`` narrow a run; ``--smoke`` runs one tiny epoch per method (to see whether an
environment works at all). Results of several ``--env-label`` runs are merged into the same JSON file under
``environments``; an error that stops a method is recorded verbatim (shortened traceback) instead of a number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

DATA = Path("/tmp/peer/digits_raw.npz")
METHODS = ("source_only", "dann", "dann_schedule", "deepcoral", "mdd", "deepcoral_patched")
NOTES = [
    "source_only = adapt.base.BaseAdaptDeep (same fit loop / data pipeline / encoder+head, plain supervised "
    "train_step on the source batches). Every method: 79 steps/epoch (ADAPT repeats the smaller domain).",
    "dann: ADAPT default constant lambda_=0.1 (no ramp), discriminator Dense(100,relu)->Dense(1,sigmoid), three Adam "
    "optimisers (task / encoder / discriminator) cloned from Adam(1e-3). dann_schedule: same, lambda_ a tf.Variable "
    "ramped 0 -> 0.1 over all steps with adapt.utils.UpdateLambda(gamma=10) (the DANN paper's ramp shape).",
    "deepcoral: ADAPT 0.4.5 as shipped updates the encoder with the gradient of lambda*CORAL ONLY "
    "(enc_tape.gradient(disc_loss, encoder vars)); the classification loss never reaches the encoder, contrary to "
    "its docstring objective L_task + lambda*||C_S-C_T||^2. deepcoral_patched (NOT ADAPT as shipped) restores "
    "task+CORAL gradient on the encoder, everything else unchanged.",
    "mdd: ADAPT defaults lambda_=0.1, gamma=4; its discriminator is forced to be a (noised) copy of the task network.",
    "target_accuracy/source_train_accuracy are computed here by argmax over model.predict; the 'loss'/'acc' entries "
    "of last_epoch_logs are unreliable with Keras 3 (ADAPT's _update_logs feeds (y, y_pred) to every metric, "
    "including the loss tracker), disc_loss is ADAPT's own value; -log(EPS)=15.94 means a saturated discriminator.",
    "Timings are wall seconds of model.fit on 2 CPU cores while another benchmark ran in parallel: noisy.",
]


# --- data --------------------------------------------------------------------------------------------------------

def prepare(path: Path = DATA) -> Path:
    """Write ``xs, ys, xt, yt`` (float32 (N, 32, 32, 1) in [0, 1], int64 labels) with tltf's offline loaders."""
    from PIL import Image

    from tltf.data import offline

    xs, ys = offline.mnist_5k()
    xt, yt = offline.uci_digits()

    def resize(x: np.ndarray) -> np.ndarray:
        out = [np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR), dtype=np.float32) for im in x]
        return (np.stack(out) / 255.0)[..., None].astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, xs=resize(xs), ys=ys.astype(np.int64), xt=resize(xt), yt=yt.astype(np.int64))
    return path


# --- models ------------------------------------------------------------------------------------------------------

def networks(seed: int):
    import tensorflow as tf

    layers = tf.keras.layers
    tf.keras.utils.set_random_seed(seed)
    encoder = tf.keras.Sequential([
        tf.keras.Input((32, 32, 1)),
        layers.Conv2D(32, 5, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(48, 5, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(100, activation="relu"),
    ], name="encoder")
    task = tf.keras.Sequential([tf.keras.Input((100,)), layers.Dense(10, activation="softmax")], name="task")
    disc = tf.keras.Sequential([tf.keras.Input((100,)), layers.Dense(100, activation="relu"),
                                layers.Dense(1, activation="sigmoid")], name="discriminator")
    return encoder, task, disc


def build(method: str, seed: int, lr: float, steps: int = 790):
    """``(model, extra fit kwargs)``; ``steps`` = total optimiser steps (for the lambda schedule)."""
    import tensorflow as tf
    from adapt.base import BaseAdaptDeep
    from adapt.feature_based import DANN, MDD, DeepCORAL
    from adapt.utils import UpdateLambda

    encoder, task, disc = networks(seed)
    common = dict(encoder=encoder, task=task, optimizer=tf.keras.optimizers.Adam(lr),
                  loss="categorical_crossentropy", metrics=["acc"], random_state=seed)
    if method == "source_only":
        return BaseAdaptDeep(**common), {}
    if method == "dann":
        return DANN(discriminator=disc, lambda_=0.1, **common), {}       # ADAPT's default lambda_ (constant)
    if method == "dann_schedule":     # the DANN paper's ramp 2/(1+exp(-10p))-1, via ADAPT's own UpdateLambda, to 0.1
        model = DANN(discriminator=disc, lambda_=tf.Variable(0.0), **common)
        return model, {"callbacks": [UpdateLambda(lambda_max=0.1, max_steps=steps, gamma=10.0)]}
    if method == "deepcoral":
        return DeepCORAL(lambda_=1.0, **common), {}                      # ADAPT's default lambda_
    if method == "deepcoral_patched":                                     # diagnostic, not ADAPT as shipped
        return _patched_deepcoral()(lambda_=1.0, **common), {}
    if method == "mdd":
        return MDD(lambda_=0.1, gamma=4.0, **common), {}      # ADAPT defaults; discriminator = copy of task
    raise ValueError(method)


def _patched_deepcoral():
    """ADAPT 0.4.5's DeepCORAL with one change: the encoder gets the gradient of task loss + lambda * CORAL loss.

    As shipped, ``DeepCORAL.train_step`` (adapt 0.4.5) updates the encoder with ``enc_tape.gradient(disc_loss, ...)``
    only -- the classification loss never reaches the encoder, although the docstring's objective is
    ``L_task + lambda ||C_S - C_T||_F^2`` (older upstream versions used one tape on ``task_loss + disc_loss``).
    This subclass restores that objective, with ADAPT's own CORAL term (0.25 * mean squared covariance difference).
    """
    import tensorflow as tf
    from adapt.feature_based import DeepCORAL

    class PatchedDeepCORAL(DeepCORAL):
        def train_step(self, data):
            xs, xt, ys, _ = self._unpack_data(data)
            with tf.GradientTape() as task_tape, tf.GradientTape() as enc_tape:
                fs = self.encoder_(xs, training=True)
                ft = self.encoder_(xt, training=True)
                ys_pred = tf.reshape(self.task_(fs, training=True), tf.shape(ys))
                n = tf.cast(tf.shape(fs)[0], fs.dtype)

                def cov(f):
                    s = tf.reduce_sum(f, 0)
                    return (tf.matmul(f, f, transpose_a=True) - tf.tensordot(s, s, axes=0) / n) / (n - 1.0)

                task_loss = tf.reduce_mean(self.task_loss_(ys, ys_pred))
                disc_loss = self.lambda_ * tf.reduce_mean(0.25 * tf.square(cov(fs) - cov(ft)))
                enc_loss = task_loss + disc_loss
            tv, ev = self.task_.trainable_variables, self.encoder_.trainable_variables
            self.optimizer.apply_gradients(zip(task_tape.gradient(task_loss, tv), tv))
            self.optimizer_enc.apply_gradients(zip(enc_tape.gradient(enc_loss, ev), ev))
            logs = self._update_logs(ys, ys_pred)
            logs.update({"disc_loss": disc_loss})
            return logs

    return PatchedDeepCORAL


def run_one(method: str, seed: int, data, epochs: int, batch: int, lr: float) -> dict:
    import tensorflow as tf

    xs, ys, xt, yt = data
    ys1 = tf.keras.utils.to_categorical(ys, 10)
    steps = int(np.ceil(max(len(xs), len(xt)) / batch)) * epochs
    model, extra = build(method, seed, lr, steps)
    start = time.perf_counter()
    model.fit(xs, ys1, Xt=xt, epochs=epochs, batch_size=batch, verbose=0, **extra)
    fit_s = time.perf_counter() - start
    pred_t = np.asarray(model.predict(xt, batch_size=256)).argmax(-1)
    pred_s = np.asarray(model.predict(xs, batch_size=256)).argmax(-1)
    hist = {k: [float(v) for v in vals] for k, vals in getattr(model, "history_", {}).items()}
    lam = getattr(model, "lambda_", None)
    return {"method": method, "seed": seed, "target_accuracy": float((pred_t == yt).mean()),
            "source_train_accuracy": float((pred_s == ys).mean()), "seconds": round(fit_s, 1),
            "seconds_total": round(time.perf_counter() - start, 1),
            "target_pred_counts": np.bincount(pred_t, minlength=10).tolist(),
            "final_lambda": None if lam is None else round(float(np.asarray(lam)), 4),
            "disc_loss_per_epoch": [round(v, 3) for v in hist.get("disc_loss", [])],
            "last_epoch_logs": {k: round(v[-1], 4) for k, v in hist.items()}}


def short_trace(exc: BaseException, keep: int = 14) -> str:
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    return "\n".join(lines if len(lines) <= keep else lines[:3] + ["  ..."] + lines[-(keep - 4):])


def versions() -> dict:
    out = {"python": platform.python_version(), "TF_USE_LEGACY_KERAS": os.environ.get("TF_USE_LEGACY_KERAS")}
    from importlib import metadata

    for name in ("tensorflow", "keras", "tf_keras", "adapt", "scikeras", "scikit-learn", "cvxopt", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import tensorflow as tf
        out["tf.keras"] = tf.keras.__name__
    except Exception as exc:  # noqa: BLE001
        out["tf.keras"] = f"error: {exc}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", action="store_true", help="write the .npz (needs tltf) and exit")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--smoke", action="store_true",
                        help="1 epoch on 512+512 samples, seed 0: does it run?")
    parser.add_argument("--env-label", default="default")
    parser.add_argument("--env-note", default="")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    if args.prepare:
        print("wrote", prepare(Path(args.data)))
        return

    with np.load(args.data) as f:
        data = (f["xs"], f["ys"], f["xt"], f["yt"])
    seeds = [int(s) for s in args.seeds.split(",")]
    epochs = args.epochs
    if args.smoke:
        # MNIST-5k is sorted by class: take random subsets
        i = np.random.default_rng(0).permutation(len(data[0]))[:512]
        j = np.random.default_rng(1).permutation(len(data[2]))[:512]
        data, seeds, epochs = (data[0][i], data[1][i], data[2][j], data[3][j]), [0], 1
    info = versions()
    print(json.dumps(info), flush=True)
    record = {"versions": info, "note": args.env_note, "smoke": args.smoke,
              "config": {"epochs": epochs, "batch": args.batch, "lr": args.lr, "seeds": seeds,
                         "n_source": int(len(data[0])), "n_target": int(len(data[2])),
                         "cpu_threads": os.cpu_count()},
              "runs": [], "errors": {}, "summary": {}}
    for method in args.methods.split(","):
        for seed in seeds:
            try:
                row = run_one(method, seed, data, epochs, args.batch, args.lr)
            except Exception as exc:  # noqa: BLE001  (an error is a result here)
                record["errors"][method] = short_trace(exc)
                print(f"{method} seed {seed}: ERROR\n{record['errors'][method]}", flush=True)
                break
            record["runs"].append(row)
            print(f"{method:12s} seed {seed}: target acc {row['target_accuracy']:.4f}  "
                  f"(source train {row['source_train_accuracy']:.4f})  {row['seconds']:.1f}s", flush=True)
        accs = [r["target_accuracy"] for r in record["runs"] if r["method"] == method]
        secs = [r["seconds"] for r in record["runs"] if r["method"] == method]
        if accs:
            record["summary"][method] = {
                "target_accuracy_mean": round(float(np.mean(accs)), 4),
                "target_accuracy_sd": round(float(np.std(accs, ddof=1)), 4) if len(accs) > 1 else None,
                "n_seeds": len(accs), "seconds_mean": round(float(np.mean(secs)), 1)}
    print(json.dumps(record["summary"], indent=1))
    if args.json:
        path = Path(args.json)
        doc = json.loads(path.read_text()) if path.exists() else {}
        doc.setdefault("benchmark", "ADAPT 0.4.5 on MNIST-5k -> UCI digits (raw, 32x32 grey), DANN digit CNN")
        doc["notes"] = NOTES
        doc.setdefault("environments", {})[args.env_label] = record
        path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
