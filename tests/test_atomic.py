"""Atomic writes: the file appears whole with ordinary permissions, or not at all."""

import os
import stat

import pytest

from tltf.atomic import replacing
from tltf.reporting import write_json


def test_written_file_has_umask_permissions_not_0600(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 1\n}\n'


def test_failure_leaves_neither_the_target_nor_a_temp_file(tmp_path):
    (tmp_path / "keep.onnx").write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(tmp_path / "keep.onnx", ".part") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "keep.onnx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx"]
