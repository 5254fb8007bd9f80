"""Hostile files handed to ``tltf weights import``, ``tltf predict`` and ``tltf bench``: each gets a one-line error
(exit 2, one ``error:`` line naming the file, no traceback), nothing runs, and the bombs stay within
``hostile.EXTRA_MB`` of TensorFlow's own start-up.

Every file is built here, cheaply: the ``.pth`` bombs opcode by opcode (a declared 40 GB tensor over a 16 MB
deflated member, a 2**60-path DAG of shared lists, a 9-byte memo bomb, a stride-0 view), the ``.onnx`` files from a
tiny exported model (emptied, garbled, truncated, with lying metadata), the huge PNGs row by row (a 15000x15000
1-bit PNG is 27 KB on disk and 225 megapixels decoded). Only the bombs run in a child process (``hostile.run_tltf``,
which reads the child's peak RSS); the rest runs in-process through ``conftest.cli``.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import cli
from hostile import EXTRA_MB, baseline_mb, rss_growth_mb, run_tltf
from pickle_ops import global_ as _global, integer as _int, string as _str, tuple_ as _tuple

# --- building hostile files ------------------------------------------------------------------------------------


def _tensor(key: str, numel: int, size: tuple, stride: tuple) -> bytes:
    """``torch._utils._rebuild_tensor_v2(("storage", torch.FloatStorage, key, "cpu", numel), 0, size, stride, ...)``"""
    pid = _tuple([_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"), _int(numel)]) + b"Q"
    return (_global("torch._utils", "_rebuild_tensor_v2")
            + _tuple([pid, _int(0), _tuple(_int(v) for v in size), _tuple(_int(v) for v in stride), b"\x89",
                      _global("collections", "OrderedDict") + b")R"]) + b"R")


def _state_dict(items: dict[str, bytes]) -> bytes:
    """A pickled ``OrderedDict`` whose values are the given pickled objects (no trailing STOP)."""
    return (_global("collections", "OrderedDict") + b")R(" + b"".join(_str(k) + v for k, v in items.items())
            + b"u")


def _dag(levels: int) -> bytes:
    """``l = []; for _ in range(levels): l = [l, l]`` with the memo sharing each level: ``4 * levels`` opcodes,
    ``2**levels`` paths to the innermost list."""
    assert levels < 255
    ops = b"]q\x000"  # EMPTY_LIST, BINPUT 0, POP
    for i in range(1, levels + 1):
        ops += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i]) + b"0"  # [l, l], BINPUT i, POP
    return ops + b"h" + bytes([levels])


def _zip_pth(path: Path, body: bytes, members: dict[str, bytes | int] | None = None) -> Path:
    """A torch zip checkpoint: ``archive/data.pkl`` = protocol 2 + ``body`` + STOP; ``members`` maps a storage key
    to its bytes (stored) or to a count of zero bytes written as a *deflated* stream."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + body + b".")
        zf.writestr("archive/byteorder", "little")
        for key, data in (members or {}).items():
            if isinstance(data, int):
                info = zipfile.ZipInfo(f"archive/data/{key}")
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w") as f:
                    chunk = bytes(1 << 20)
                    for _ in range(data >> 20):
                        f.write(chunk)
            else:
                zf.writestr(f"archive/data/{key}", data)
    return path


def _png(path: Path, width: int, height: int) -> Path:
    """A black 1-bit grayscale PNG of any size, compressed row by row (memory: one row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + the packed row
    comp = zlib.compressobj(9)
    idat = b"".join([comp.compress(row) for _ in range(height)] + [comp.flush()])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _refused(result, name: str) -> str:
    """``result`` (conftest.cli or hostile.Outcome) is exit 2 with one ``error:`` line naming ``name``."""
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert code == 2, (code, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], result.stderr[-2000:]
    return lines[0]


def _bounded(outcome) -> None:
    assert outcome.one_line_error, outcome.stderr[-2000:]
    assert outcome.peak_mb < baseline_mb() + EXTRA_MB, (outcome.peak_mb, baseline_mb())


# --- the bombs: child processes, run side by side (each starts TensorFlow: ~6 s, more on a busy machine) ---------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 28x28 cnn_small classifier (.keras and its exported .onnx) and a small real PNG."""
    import keras
    from PIL import Image

    from tltf.export.onnx import export_onnx
    from tltf.models.classifier import build_classifier

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("hostile")
    build_classifier("cnn_small", ["a", "b"], image_size=28, weights="none").save(folder / "tiny.keras")
    export_onnx(folder / "tiny.keras", folder / "tiny.onnx")
    Image.new("RGB", (40, 30), (200, 30, 90)).save(folder / "ok.png")
    return {"keras": folder / "tiny.keras", "onnx": folder / "tiny.onnx", "png": folder / "ok.png"}


@pytest.fixture(scope="module")
def bombs(tiny, tmp_path_factory):
    """``{name: (file, hostile.Outcome)}`` for the files whose memory matters (and TensorFlow's baseline)."""
    from concurrent.futures import ThreadPoolExecutor

    folder = tmp_path_factory.mktemp("bombs")
    out = folder / "out.keras"
    # data.pkl declares 10**10 floats (40 GB) over a 16 MB member deflated to 16 KB
    zipbomb = _zip_pth(folder / "zipbomb.pth", _state_dict({"w": _tensor("0", 10**10, (10**10,), (1,))}),
                       {"0": 16 << 20})
    # a state_dict value that is 60 levels of l = [l, l]: 2**60 paths through 240 opcodes
    dag = _zip_pth(folder / "dag.pth", _state_dict({"w": _dag(60)}))
    # 27 KB on disk, 225 megapixels decoded
    png = _png(folder / "bomb.png", 15000, 15000)
    assert max(f.stat().st_size for f in (zipbomb, dag, png)) < 100_000
    runs = {"zipbomb": (zipbomb, ("weights", "import", "--arch", "mobilenet_v2", zipbomb, "--out", out)),
            "dag": (dag, ("weights", "import", "--arch", "mobilenet_v2", dag, "--out", out)),
            "png": (png, ("predict", tiny["keras"], png))}
    with ThreadPoolExecutor(len(runs) + 1) as pool:
        pool.submit(baseline_mb)
        futures = {name: (path, pool.submit(run_tltf, *args)) for name, (path, args) in runs.items()}
        results = {name: (path, future.result()) for name, (path, future) in futures.items()}
    assert not out.exists()
    return results


def test_zip_bomb_pth_is_refused_before_inflating(bombs):
    """Was: killed past 2.5-6 GB. Refused from the declared size, naming the tensor, before inflating anything."""
    path, outcome = bombs["zipbomb"]
    _bounded(outcome)
    line = _refused(outcome, path.name)
    assert "'w'" in line and "40,000,000,000 bytes" in line


def test_dag_bomb_pth_is_refused_without_expanding(bombs):
    """Was: killed at 6 GB. The value is not a tensor: no state_dict, and nothing walks the shared lists."""
    path, outcome = bombs["dag"]
    _bounded(outcome)
    assert "holds no state_dict" in _refused(outcome, path.name)


def test_15000px_png_is_refused_by_predict_in_bounded_memory(bombs):
    """Was: exit 0 after a 3.9 GB peak. Over Pillow's own decompression-bomb limit (179 megapixels)."""
    path, outcome = bombs["png"]
    _bounded(outcome)
    assert "225,000,000-pixel image" in _refused(outcome, path.name)


# --- .pth, the other ceilings (in-process: refused before anything is allocated) --------------------------------


def test_declared_storage_larger_than_its_member_is_refused(tmp_path):
    """100 MB declared (under the per-tensor ceiling) over a member whose zip header says 16 MB."""
    from tltf.errors import TltfError
    from tltf.weights.pth import read_pth

    pth = _zip_pth(tmp_path / "lie.pth", _state_dict({"w": _tensor("0", 25_000_000, (25_000_000,), (1,))}),
                   {"0": 16 << 20})
    with pytest.raises(TltfError, match=r"lie\.pth: tensor 'w' \(storage 0\) declares 100,000,000 bytes but its "
                                        r"archive member archive/data/0 holds 16,777,216"):
        read_pth(pth)


def test_deflated_member_inflating_too_much_is_refused(tmp_path):
    """A declared size the member really holds, but inflated 1000x from a tiny deflate stream."""
    from tltf.errors import TltfError
    from tltf.weights.pth import MAX_INFLATE_RATIO, read_pth

    n = 16 << 20
    pth = _zip_pth(tmp_path / "inflate.pth", _state_dict({"w": _tensor("0", n // 4, (n // 4,), (1,))}), {"0": n})
    with pytest.raises(TltfError, match=rf"inflate\.pth: tensor 'w' \(storage 0\): refused: .*more than "
                                        rf"{MAX_INFLATE_RATIO}x"):
        read_pth(pth)


def test_stride_zero_view_cannot_expand_one_float(tmp_path):
    from tltf.errors import TltfError
    from tltf.weights.pth import read_pth

    one = np.ones(1, np.float32).tobytes()
    pth = _zip_pth(tmp_path / "stride0.pth", _state_dict({"w": _tensor("0", 1, (1 << 28,), (0,))}), {"0": one})
    with pytest.raises(TltfError, match=r"stride0\.pth: tensor 'w': refused: .*stride-0 views"):
        read_pth(pth)
    pth = _zip_pth(tmp_path / "huge.pth", _state_dict({"w": _tensor("0", 1, (1 << 20, 1 << 20), (0, 0))}),
                   {"0": one})
    with pytest.raises(TltfError, match=r"huge\.pth: tensor 'w' would take 4,398,046,511,104 bytes"):
        read_pth(pth)


def test_memo_bomb_is_refused_before_unpickling(tmp_path):
    """``LONG_BINPUT i``: CPython's unpickler allocates and zeroes a memo of 2i entries (9 bytes, i = 2**31: 32 GB;
    2**24 here, 256 MB, in case it were not refused)."""
    from tltf.errors import TltfError
    from tltf.weights.pth import read_pth

    pth = _zip_pth(tmp_path / "memo.pth", b"N" + b"r" + struct.pack("<I", 2**24))
    with pytest.raises(TltfError, match=r"memo\.pth: refused: .* memo entry 16777216 after only 3 opcodes"):
        read_pth(pth)


def test_dag_beside_a_state_dict_is_never_walked(tmp_path):
    """A checkpoint whose state_dict is fine and whose other entry shares lists (2**20 paths here) reads without
    a single list being copied."""
    import tracemalloc

    from tltf.weights.pth import read_pth

    w = np.arange(6, dtype=np.float32)
    body = _state_dict({"state_dict": _state_dict({"w": _tensor("0", 6, (2, 3), (3, 1))}), "optim": _dag(20)})
    pth = _zip_pth(tmp_path / "beside.pth", body, {"0": w.tobytes()})
    tracemalloc.start()
    try:
        state = read_pth(pth)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert list(state) == ["w"] and state["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert peak < 2 << 20, peak  # walking the 2**20 paths would copy a million lists (> 50 MB)


def test_pickle_with_too_many_opcodes_is_refused(tmp_path, monkeypatch):
    from tltf.errors import TltfError
    from tltf.weights import pth as pth_module

    monkeypatch.setattr(pth_module, "MAX_PICKLE_OPCODES", 100)
    pth = _zip_pth(tmp_path / "ops.pth", b"(" + b"N" * 200 + b"l")
    with pytest.raises(TltfError, match=r"ops\.pth: refused: the archive/data\.pkl has more than 100 opcodes"):
        pth_module.read_pth(pth)


# --- .onnx -----------------------------------------------------------------------------------------------------


def _bad_onnx(tiny, folder: Path) -> dict[str, Path]:
    data = tiny["onnx"].read_bytes()
    files = {"empty": b"", "garbage": bytes(range(256)) * 8, "truncated": data[: len(data) // 2],
             "header": data[:64]}
    for name, content in files.items():
        (folder / f"{name}.onnx").write_bytes(content)
    return {name: folder / f"{name}.onnx" for name in files}


def test_bad_onnx_files_predict_and_bench(tiny, tmp_path):
    """Empty (was: IndexError traceback), garbage and truncated .onnx files: one line from predict and bench."""
    for name, path in _bad_onnx(tiny, tmp_path).items():
        _refused(cli("predict", path, tiny["png"]), path.name)
        _refused(cli("bench", path, "--batch-sizes", "1", "--iterations", "1", "--warmup", "0"), path.name)
        assert not (tmp_path / f"{name}.bench.png").exists()
    assert "(empty file)" in _refused(cli("predict", tmp_path / "empty.onnx", tiny["png"]), "empty.onnx")


def test_onnx_with_lying_metadata(tiny, tmp_path):
    import onnx

    from tltf.export.onnx import read_metadata, set_metadata

    cases = {"size": ({"image_size": "[100000, 100000]"}, "larger than the 4096x4096"),
             "notjson": ({"image_size": "{oops"}, "image_size"),
             "names": ({"class_names": "[1, 2]"}, "class_names")}
    for name, (change, said) in cases.items():
        proto = onnx.load(str(tiny["onnx"]))
        set_metadata(proto, {**read_metadata(proto), **change})
        onnx.save(proto, str(tmp_path / f"{name}.onnx"))
        assert said in _refused(cli("predict", tmp_path / f"{name}.onnx", tiny["png"]), f"{name}.onnx")


def test_good_files_still_work(tiny):
    for model in (tiny["keras"], tiny["onnx"]):
        result = cli("predict", model, tiny["png"], "--json", "--top", "1")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)[0]["file"] == str(tiny["png"])


# --- images ----------------------------------------------------------------------------------------------------


def test_10000px_png_is_refused_by_predicts_own_ceiling(tiny, tmp_path):
    """100 megapixels: Pillow alone would only warn (it refuses above 179), decoding would take 1.5 GB; predict
    refuses it, without the warning, before the model is loaded."""
    from tltf.predict import MAX_IMAGE_PIXELS

    png = _png(tmp_path / "big.png", 10000, 10000)
    line = _refused(cli("predict", tiny["onnx"], tiny["png"], png), "big.png")
    assert "10000x10000 image (100,000,000 pixels)" in line and f"{MAX_IMAGE_PIXELS:,}" in line


def test_10000px_png_in_training_data_is_skipped_never_decoded(tmp_path, capsys):
    """A 10,000 x 10,000 PNG (a few KB) in a class folder: skipped by the scan with a warning that names it and its
    pixel count (from the header, against predict's own ceiling), so the pipeline never decodes it (it would map
    300 MB per decode); the split's ``files`` are the images it keeps, carried over by ``select``."""
    from conftest import write_image_folder

    from tltf.data.builtin import SHAPES, shapes
    from tltf.data.sources import folder_source
    from tltf.predict import MAX_IMAGE_PIXELS

    root = write_image_folder(tmp_path / "images", *shapes(9, size=28, seed=0), SHAPES)
    big = _png(root / SHAPES[1] / "big.png", 10000, 10000)
    assert big.stat().st_size < 100_000

    def scan_and_read():
        source = folder_source(root)
        return source, list(source.train.dataset().as_numpy_iterator())

    with pytest.warns(UserWarning, match=r"skipped 1 image\(s\) over the") as caught:
        (source, images), grown = rss_growth_mb(scan_and_read)
    said = f"skipped 1 image(s) over the {MAX_IMAGE_PIXELS:,} pixels tltf decodes, e.g. {big} (10000x10000, " \
           "100,000,000 pixels)"
    assert any(said in str(w.message) for w in caught) and f"warning: {root}: {said}" in capsys.readouterr().out
    # measured: 6.5 MB (3 runs, 6.47-6.51); decoding the big image would take 300 MB: the bound sits 15x above
    # the measurement and 3x below the failure it guards against
    assert len(images) == len(source.train) == 9 and grown < 100, grown
    files = source.train.files
    assert len(files) == len(source.train.labels) == 9 and str(big) not in files
    assert all(Path(f).is_file() for f in files) and source.train.select([0, 2]).files is files


def test_over_pillows_limit_in_target_data_is_skipped_with_its_pixel_count(tmp_path, capsys):
    """225 megapixels: Pillow refuses to open it at all; the scan still says how large it is."""
    from PIL import Image

    from tltf.data.sources import unlabelled_folder

    (tmp_path / "t").mkdir()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "t" / "ok.png")
    big = _png(tmp_path / "t" / "huge.png", 15000, 15000)
    with pytest.warns(UserWarning, match=r"huge\.png \(225,000,000 pixels\)$"):
        split = unlabelled_folder(tmp_path / "t")
    assert list(split.files) == [str(tmp_path / "t" / "ok.png")] and "huge.png" in capsys.readouterr().out
    assert big.exists()


def test_unreadable_images_are_one_line(tiny, tmp_path):
    (tmp_path / "text.png").write_text("not a png")
    (tmp_path / "cut.png").write_bytes(_png(tmp_path / "whole.png", 300, 300).read_bytes()[:20])
    for name in ("text.png", "cut.png", "missing.png"):
        line = _refused(cli("predict", tiny["keras"], tmp_path / name), name)
        assert "not a readable image" in line or "no such file" in line


def test_onnx_graph_that_fails_to_run(tiny, tmp_path):
    """A well-formed graph onnxruntime loads but cannot run (a reshape that cannot fit): one line from predict and
    bench, not onnxruntime's exception."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["pixels", "shape"], ["probabilities"])], "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 28, 28, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([5, 5], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "cannot_run.onnx"))
    for args in (("predict", tmp_path / "cannot_run.onnx", tiny["png"]),
                 ("bench", tmp_path / "cannot_run.onnx", "--batch-sizes", "1", "--iterations", "1")):
        assert "onnxruntime failed to run it" in _refused(cli(*args), "cannot_run.onnx")
