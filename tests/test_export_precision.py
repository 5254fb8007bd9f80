"""tltf.export.precision: one table of export precisions, read by the exporter, the parity gate, `tltf export` and the
benchmark runner. Fast: nothing here converts a model."""

import numpy as np
import pytest
from conftest import cli

from tltf.errors import TltfError
from tltf.export import onnx, parity, precision, quantize
from tltf.export.precision import MAX_DIFF, MIN_AGREEMENT, PRECISIONS


def test_the_table():
    assert precision.names() == ("fp32", "fp16", "int8")
    assert precision.DEFAULT == "fp32"
    for row in PRECISIONS:
        assert precision.get(row.name) is row
        assert row.gate in (MAX_DIFF, MIN_AGREEMENT) and row.gate.valid(row.threshold)
        assert (row.quantizer is None) == (row.progress is None)
        if row.quantizer is not None:  # names a real conversion function
            assert callable(getattr(quantize, row.quantizer))
    assert [row.name for row in precision.flagged()] == ["fp16", "int8"]
    assert [row.name for row in precision.gated_by(MAX_DIFF)] == ["fp32"]
    assert [row.name for row in precision.gated_by(MIN_AGREEMENT)] == ["fp16", "int8"]
    assert [row.name for row in PRECISIONS if row.needs_calibration] == ["int8"]
    with pytest.raises(Exception):  # frozen
        PRECISIONS[0].threshold = 1.0


def test_unknown_precision_is_a_one_line_error_naming_the_option_and_the_choices(tmp_path):
    with pytest.raises(TltfError) as e:
        precision.get("int4")
    assert str(e.value) == "precision 'int4': must be one of fp32, fp16, int8"
    with pytest.raises(TltfError, match=r"^--precision 'bf16': must be one of fp32, fp16, int8$"):
        precision.get("bf16", option="--precision")
    with pytest.raises(TltfError) as e:  # the exporter checks before it loads anything
        onnx.export_onnx(tmp_path / "absent.keras", tmp_path / "m.onnx", precision="int4")
    assert str(e.value) == "precision 'int4': must be one of fp32, fp16, int8" and "\n" not in str(e.value)
    with pytest.raises(TltfError, match="precision 'int4'"):
        parity.measure(np.eye(3), np.eye(3), precision="int4")
    assert list(tmp_path.iterdir()) == []


def test_the_exporter_and_the_gate_use_the_table():
    assert onnx.PRECISIONS == precision.names()
    info = {"class_names": ["a", "b"], "num_classes": 2, "image_size": [8, 8], "backbone": "x", "preprocess": "y"}
    assert onnx.metadata(info)["precision"] == precision.DEFAULT
    assert parity.THRESHOLDS == {row.name: row.threshold for row in PRECISIONS}

    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    for row in PRECISIONS:
        assert onnx.metadata(info, row.name)["precision"] == row.name
        result = parity.measure(reference, reference, precision=row.name)
        assert result["threshold"] == row.threshold and result["precision"] == row.name
        assert parity.passed(result)
    # a max-diff row is held to the relative difference, an agreement row to top-1 agreement
    nudged = reference + np.array([[0.0, 1e-3]] * 4)          # relative diff 1/700 > 1e-4; same top-1
    swapped = reference[:, ::-1]                                # every top-1 differs; relative diff 1
    for row in PRECISIONS:
        near, far = parity.measure(nudged, reference, row.name), parity.measure(swapped, reference, row.name)
        assert parity.passed(near) == (row.gate is MIN_AGREEMENT)
        assert not parity.passed(far)
        with pytest.raises(TltfError, match=f"{row.gate.option} .* would accept it"):
            parity.gate(far, row.name, "x.onnx")


def test_the_cli_offers_every_row():
    from tltf.cli.export import command

    options = {opt: param for param in command.params for opt in param.opts}
    for row in precision.flagged():
        param = options[row.flag]
        assert param.is_flag and param.name == row.name and param.help.startswith(row.description)
    assert all(row.flag is None for row in PRECISIONS if row.name == precision.DEFAULT)
    assert "[default: 1e-4]" in options[MAX_DIFF.option].help
    assert "[default: 0.99 fp16, 0.97 int8]" in options[MIN_AGREEMENT.option].help
    assert options["--calibration-data"].help.startswith("Real images to calibrate --int8 ")


def test_cli_precision_errors_come_from_the_table(tmp_path):
    model = tmp_path / "m.keras"  # never read: each command below fails on its options first
    for row in precision.flagged():
        if row.needs_calibration:
            result = cli("export", model, "--onnx", row.flag)
            assert result.exit_code == 2 and precision.needs_calibration_message(row) in result.stderr
        other = MAX_DIFF if row.gate is MIN_AGREEMENT else MIN_AGREEMENT
        result = cli("export", model, "--onnx", row.flag, "--calibration-data", tmp_path, other.option, "0.5")
        assert result.exit_code == 2
        assert f"for {row.label} use {row.gate.option}" in result.stderr
    result = cli("export", model, "--onnx", *(row.flag for row in precision.flagged()), "--calibration-data", tmp_path)
    assert result.exit_code == 2 and "--fp16 and --int8: choose one" in result.stderr
    result = cli("export", model, "--onnx", "--min-agreement", "0.5")
    assert result.exit_code == 2
    assert "--min-agreement gates --fp16/--int8 exports; for fp32 use --max-diff" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_default_thresholds_at_their_boundaries():
    """fp32: a relative difference of 1e-4 passes, just over fails; fp16: 99 of 100 top-1 agreeing passes, 98
    fails; int8: 97 of 100 passes, 96 fails (the gate refuses a file that falls short by one image)."""
    rng = np.random.default_rng(0)
    reference = rng.dirichlet(np.ones(4), size=100)
    reference[np.arange(100), reference.argmax(axis=1)] += 1.0  # clear winners, range [0, ~2]
    span = reference.max() - reference.min()

    def flipped(k):  # the first k images' top-1 moved to another class
        out = reference.copy()
        for i in range(k):
            top = out[i].argmax()
            out[i, (top + 1) % 4] = out[i, top] + 0.5
        return out

    for name, ok, short in (("fp16", 1, 2), ("int8", 3, 4)):
        assert parity.passed(parity.measure(flipped(ok), reference, name))
        assert not parity.passed(parity.measure(flipped(short), reference, name))
    nudge = np.zeros_like(reference)
    for fraction, passes in ((0.99e-4, True), (1.01e-4, False)):
        nudge[0, 0] = fraction * span
        assert parity.passed(parity.measure(reference + nudge, reference, "fp32")) == passes


def test_gate_descriptions_and_threshold_formatting():
    assert MAX_DIFF.describe(1e-4) == "<= 0.0001 of the output range"
    assert MIN_AGREEMENT.describe(0.97) == ">= 97% top-1 agreement"
    assert not MAX_DIFF.valid(0) and MAX_DIFF.valid(2.0)
    assert MIN_AGREEMENT.valid(0) and MIN_AGREEMENT.valid(1) and not MIN_AGREEMENT.valid(1.5)
    assert [precision.format_threshold(x) for x in (1e-4, 1.5e-5, 0.99, 0.5)] == ["1e-4", "1.5e-5", "0.99", "0.5"]
