"""Stage mechanics: which layers train, what changes and what stays bit-identical, effective learning rates."""

import keras
import numpy as np
import pytest

from tltf.models.classifier import backbone_of, build_classifier
from tltf.staging import Stage, StagedFineTuning, StagePlan, freeze_to, make_optimizer, prepare, preset
from tltf.staging.freezing import blocks_of


def _model(backbone="mobilenet_v2", size=32, classes=("a", "b", "c")):
    keras.utils.set_random_seed(0)
    model = build_classifier(backbone, list(classes), size, weights="none")
    _randomise_bn(backbone_of(model))
    return model


def _randomise_bn(net):
    """Give BN layers non-trivial statistics so that a frozen random backbone still passes signal."""
    rng = np.random.default_rng(1)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_variance.assign(rng.uniform(0.01, 0.05, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.01, n).astype("float32"))


def _snapshot(model):
    return {v.path: v.numpy().copy() for v in model.weights}


def test_gradual_preset_divides_the_budget_and_lowers_the_rate():
    plan = preset("gradual", epochs=9, learning_rate=1e-3, num_blocks=19)
    assert [s.unfreeze for s in plan.stages] == [0, 1, 10, "all"]
    assert plan.epochs == 9 and [s.epochs for s in plan.stages] == [3, 2, 2, 2]
    rates = [s.learning_rate for s in plan.stages]
    assert rates[0] == 1e-3 and all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(1e-4)
    assert preset("gradual", 2, 1e-3, 19).stages[-1].unfreeze == "all"
    assert [s.unfreeze for s in preset("finetune", 4, 1e-3, 19).stages] == [0, "all"]


def test_plan_yaml_round_trip_and_errors(tmp_path):
    from tltf.errors import TltfError

    good = tmp_path / "plan.yaml"
    good.write_text("stages:\n  - {name: head, epochs: 2, unfreeze: 0, learning_rate: 1.0e-3}\n"
                    "  - {name: top, epochs: 1, unfreeze: block_16, learning_rate: 1.0e-4, discriminative: 0.5}\n")
    plan = StagePlan.from_yaml(good)
    assert plan.epochs == 3 and plan.stages[1].unfreeze == "block_16"
    assert plan.scaled(6).epochs == 6 and [s.epochs for s in plan.scaled(6).stages] == [4, 2]
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {name: head, epochs: 2, unfrezee: 0}\n")
    with pytest.raises(TltfError, match="unknown key 'unfrezee'"):
        StagePlan.from_yaml(bad)


def test_freeze_to_trains_exactly_the_top_blocks_and_the_head():
    model = _model()
    blocks = blocks_of(model)
    freeze_to(model, 2, blocks=blocks)
    trainable_layers = {layer.name for _, layers in blocks for layer in layers if layer.trainable}
    expected = {layer.name for _, layers in blocks[-2:] for layer in layers}
    assert trainable_layers == expected
    assert all(layer.trainable for layer in model.get_layer("head")._flatten_layers())
    freeze_to(model, "block_15", blocks=blocks)  # by name: block_15 and everything above it
    assert {n for n, layers in blocks if layers[0].trainable} == {"block_15", "block_16", "top"}


def test_stages_change_unfrozen_weights_and_keep_frozen_ones_bit_identical():
    model = _model()
    plan = StagePlan([Stage("head", 1, 0, 1e-2), Stage("top2", 1, 2, 1e-2, 0.5), Stage("all", 1, "all", 1e-3)])
    model.compile(make_optimizer("adam", 1e-2), "sparse_categorical_crossentropy")
    prepare(model, plan)
    blocks = blocks_of(model)
    paths = {name: [v.path for layer in layers for v in layer.weights] for name, layers in blocks}
    head_paths = [v.path for v in model.get_layer("head").weights]
    x = np.random.default_rng(0).uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    y = np.arange(32) % 3
    changes = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.before = _snapshot(self.model)

        def on_epoch_end(self, epoch, logs=None):
            after = _snapshot(self.model)
            changes.append({p for p in after if not np.array_equal(after[p], self.before[p])})

    model.fit(x, y, epochs=3, batch_size=8, callbacks=[StagedFineTuning(plan, verbose=0), Record()], verbose=0)
    top2 = set(paths[blocks[-1][0]] + paths[blocks[-2][0]])
    below = {p for name, _ in blocks[:-2] for p in paths[name]}
    moving = {p for p in below | top2 if "moving_" in p}
    # stage 1: only the head moved
    assert changes[0] == set(head_paths)
    # stage 2: head and the top two blocks' trainable weights; nothing below, no BN statistics anywhere
    assert set(head_paths) <= changes[1]
    assert changes[1] - set(head_paths) <= top2 - moving and len(changes[1] - set(head_paths)) >= 4
    assert not changes[1] & below and not changes[1] & moving
    # stage 3: weights below the top blocks move too, BN statistics still frozen (inference mode)
    assert changes[2] & below and not changes[2] & moving


def test_discriminative_rates_are_the_applied_update_sizes_under_adam():
    """One Adam step moves each weight by ~lr (m/sqrt(v) = sign(g)): the per-block size must follow the plan."""
    model = _model()
    blocks = blocks_of(model)
    optimizer = make_optimizer("adam", 1e-3)
    optimizer.epsilon = 1e-12
    model.compile(optimizer, "sparse_categorical_crossentropy")
    plan = StagePlan([Stage("top2", 1, 2, 1e-3, discriminative=0.01)])
    prepare(model, plan)
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = np.arange(16) % 3
    before = _snapshot(model)
    model.fit(x, y, epochs=1, batch_size=16, callbacks=[StagedFineTuning(plan, verbose=0)], verbose=0)
    after = _snapshot(model)

    def step(paths):
        deltas = np.concatenate([np.abs(after[p] - before[p]).ravel() for p in paths if "kernel" in p])
        return np.median(deltas[deltas > 0])

    head = step([v.path for v in model.get_layer("head").weights])
    top = step([v.path for layer in blocks[-1][1] for v in layer.weights])
    second = step([v.path for layer in blocks[-2][1] for v in layer.weights])
    assert head == pytest.approx(1e-3, rel=0.05)
    assert top == pytest.approx(1e-3 * 0.01 ** 0.5, rel=0.05)  # top of two unfrozen blocks: lr * r^(1/2)
    assert second == pytest.approx(1e-3 * 0.01, rel=0.05)  # lowest unfrozen block: lr * r
