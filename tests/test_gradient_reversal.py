"""GradientReversal: identity forward, exactly -lambda x upstream backward, the lambda schedule, saving."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tltf.adapt.schedules import LambdaScheduler, annealed_lr, dann_lambda
from tltf.models.gradient_reversal import GradientReversal, reversal_layers, set_lambda

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 5)).astype("float32")
UP = RNG.normal(size=(4, 5)).astype("float32")


def _grad(layer, x, upstream):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    return y, tape.gradient(loss, x)


def test_forward_is_identity():
    layer = GradientReversal(0.7)
    x = RNG.normal(size=(3, 6, 6, 2)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    assert layer.compute_output_shape((None, 6, 6, 2)) == (None, 6, 6, 2)


@pytest.mark.parametrize("lam", [0.0, 0.37, 1.0, 2.5])
def test_gradient_is_minus_lambda_times_upstream(lam):
    layer = GradientReversal(lam)
    y, grad = _grad(layer, X, UP)
    np.testing.assert_array_equal(y.numpy(), X)
    np.testing.assert_allclose(grad.numpy(), -np.float32(lam) * UP, rtol=0, atol=0)


def test_set_lambda_changes_the_gradient_inside_a_compiled_function():
    layer = GradientReversal(1.0)
    layer.build(X.shape)

    @tf.function(jit_compile=True)
    def grad_fn(x, up):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * up)
        return tape.gradient(loss, x)

    np.testing.assert_array_equal(grad_fn(tf.constant(X), tf.constant(UP)).numpy(), -UP)
    layer.set_lambda(0.25)  # a variable: the traced XLA function reads the new value, no retrace needed
    np.testing.assert_array_equal(grad_fn(tf.constant(X), tf.constant(UP)).numpy(), -0.25 * UP)
    assert layer.lambda_ == 0.25


def test_mixed_precision_gradient_keeps_dtype():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = GradientReversal(0.5)
        x16 = tf.constant(X.astype("float16"))
        with tf.GradientTape() as tape:
            tape.watch(x16)
            y = layer(x16)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * UP)
        grad = tape.gradient(loss, x16)
        assert y.dtype == tf.float16 and grad.dtype == tf.float16
        assert layer.lambda_var.dtype == "float32"
        np.testing.assert_allclose(grad.numpy().astype("float32"), -0.5 * UP, atol=2e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_domain_gradient_reaches_the_features_reversed():
    """features = x @ w; domain = GRL(features) @ v: d(domain)/dw flips sign and scales by lambda; v is untouched."""
    inputs = keras.Input((3,))
    feats = keras.layers.Dense(2, use_bias=False, name="features")(inputs)
    grl = GradientReversal(0.5, name="grl")
    out = keras.layers.Dense(1, use_bias=False, name="domain")(grl(feats))
    model = keras.Model(inputs, out)
    model.get_layer("features").set_weights([np.array([[1, 0], [0, 1], [1, 1]], "float32")])
    model.get_layer("domain").set_weights([np.array([[2], [-3]], "float32")])
    x = tf.constant([[1.0, 2.0, 3.0]])

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x))
        w, v = model.get_layer("features").kernel, model.get_layer("domain").kernel
        return [g.numpy() for g in tape.gradient(loss, [w, v])]

    gw, gv = grads()
    # without reversal d(loss)/dw[i, j] = x[i] * v[j] = [[2, -3], [4, -6], [6, -9]]; reversed and halved:
    np.testing.assert_allclose(gw, -0.5 * np.array([[2, -3], [4, -6], [6, -9]], "float32"))
    assert gw[0, 0] < 0 < gw[0, 1]  # the sign check: opposite to plain backprop
    np.testing.assert_allclose(gv, np.array([[4], [5]], "float32"))  # features = [4, 5]: head gradient unchanged
    assert set_lambda(model, 1.0) == 1 and reversal_layers(model) == [grl]
    gw1, _ = grads()
    np.testing.assert_allclose(gw1, 2 * gw)


def test_save_and_load_keep_lambda(tmp_path):
    inputs = keras.Input((5,))
    out = keras.layers.Dense(1)(GradientReversal(1.0, name="grl")(inputs))
    model = keras.Model(inputs, out)
    model.get_layer("grl").set_lambda(0.37)
    path = tmp_path / "grl.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("grl")
    assert isinstance(layer, GradientReversal)
    assert layer.lambda_ == pytest.approx(0.37)
    _, grad = _grad(layer, X, UP)
    np.testing.assert_allclose(grad.numpy(), -np.float32(0.37) * UP)
    # the variable is a weight: set_weights / get_weights carry it too
    assert any(np.isclose(w, 0.37) for w in loaded.non_trainable_weights[0].numpy().reshape(-1))


def test_lambda_schedule_values():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)  # 0.4621
    assert dann_lambda(0.1) == pytest.approx(0.46211716)
    assert dann_lambda(0.5, gamma=2.0, lambda_max=0.3) == pytest.approx(0.3 * (2 / (1 + math.exp(-1)) - 1))
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] < 1.0
    assert dann_lambda(2.0) == dann_lambda(1.0) and dann_lambda(-1.0) == 0.0  # p is clipped
    assert annealed_lr(0.0, 0.01) == pytest.approx(0.01)
    assert annealed_lr(1.0, 0.01) == pytest.approx(0.01 / 11 ** 0.75)  # 0.001656
    assert annealed_lr(0.5, 1.0, alpha=2.0, beta=1.0) == pytest.approx(0.5)


def test_scheduler_sets_lambda_and_lr_each_step():
    inputs = keras.Input((5,))
    out = keras.layers.Dense(1)(GradientReversal(0.0, name="grl")(keras.layers.Dense(4)(inputs)))
    model = keras.Model(inputs, out)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = RNG.normal(size=(40, 5)).astype("float32"), RNG.normal(size=(40, 1)).astype("float32")
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((model.get_layer("grl").lambda_, float(model.optimizer.learning_rate.numpy())))

    sched = LambdaScheduler(gamma=10.0, anneal_lr=True)  # total steps from fit: 2 epochs x 4 steps
    history = model.fit(x, y, batch_size=10, epochs=2, callbacks=[sched, Spy()], verbose=0)
    assert sched.total_steps == 8
    expected = [(dann_lambda(s / 8), annealed_lr(s / 8, 0.1)) for s in range(8)]
    np.testing.assert_allclose(np.array(seen), np.array(expected), rtol=1e-6)
    assert history.history["grl_lambda"] == pytest.approx([dann_lambda(3 / 8), dann_lambda(7 / 8)])
    # a second fit (a fresh scheduler) carries on from the optimizer's step count, as a resumed run does
    seen.clear()
    model.fit(x, y, batch_size=10, epochs=1, callbacks=[LambdaScheduler(total_steps=16), Spy()], verbose=0)
    assert [s[0] for s in seen] == pytest.approx([dann_lambda(s / 16) for s in range(8, 12)])
