"""tltf.weights.pth: torch checkpoints (zip and legacy) read without torch; malicious pickles refused.

The fixtures are written here, opcode by opcode, exactly as ``torch.save`` lays them out (checked against files
written by torch 2.13: ``collections.OrderedDict`` + ``torch._utils._rebuild_tensor_v2`` calls whose storages are
persistent ids ``("storage", torch.FloatStorage, key, "cpu", numel)``; zip: ``<name>/data.pkl`` + ``<name>/data/<key>``;
legacy: magic, protocol, sys info, object, storage keys, then per storage an int64 count and the raw bytes).
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pickle_ops import global_ as _global, integer as _int, string as _str, tuple_ as _tuple

from tltf.errors import TltfError
from tltf.weights.pth import LEGACY_MAGIC, LEGACY_PROTOCOL, read_pth

# --- a minimal torch.save look-alike -------------------------------------------------------------------------

STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
                 np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
                 np.dtype("int32"): "IntStorage", np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage"}


@dataclass
class T:
    """A tensor as torch pickles it: a strided view of storage ``key``."""

    key: str
    offset: int
    size: tuple
    stride: tuple
    view: tuple | None = None  # legacy only: (view key, element offset, numel) of a storage view


@dataclass
class Raw:
    """Opcodes inserted verbatim (for malicious payloads)."""

    data: bytes


def _emit(obj, storages, legacy: bool) -> bytes:
    if isinstance(obj, Raw):
        return obj.data
    if isinstance(obj, T):
        stype, data = storages[obj.key]
        pid = [_str("storage"), _global("torch", stype), _str(obj.key), _str("cpu"), _int(data.size)]
        if legacy:
            pid.append(b"N" if obj.view is None else _tuple([_str(obj.view[0]), _int(obj.view[1]),
                                                             _int(obj.view[2])]))
        hooks = _global("collections", "OrderedDict") + b")R"
        return (_global("torch._utils", "_rebuild_tensor_v2")
                + _tuple([_tuple(pid) + b"Q", _int(obj.offset), _tuple(_int(v) for v in obj.size),
                          _tuple(_int(v) for v in obj.stride), b"\x89", hooks]) + b"R")
    if isinstance(obj, dict):
        out = _global("collections", "OrderedDict") + b")R"
        if obj:
            out += b"(" + b"".join(_emit(k, storages, legacy) + _emit(v, storages, legacy)
                                   for k, v in obj.items()) + b"u"
        return out
    if isinstance(obj, str):
        return _str(obj)
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return _int(obj)
    raise TypeError(type(obj))


def write_pth(path: Path, obj, storages: dict, legacy: bool = False) -> Path:
    """Write ``obj`` (dicts, str, int, :class:`T`, :class:`Raw`) and ``storages`` ({key: (type name, 1-D array)})."""
    body = b"\x80\x02" + _emit(obj, storages, legacy) + b"."
    if legacy:
        info = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
        keys = sorted(storages)
        with open(path, "wb") as f:
            for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, info):
                f.write(pickle.dumps(head, protocol=2))
            f.write(body)
            f.write(pickle.dumps(keys, protocol=2))
            for key in keys:
                data = storages[key][1]
                f.write(struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<")).tobytes())
        return path
    stem = "archive"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{stem}/data.pkl", body)
        zf.writestr(f"{stem}/byteorder", "little")
        for key, (_, data) in storages.items():
            zf.writestr(f"{stem}/data/{key}", data.astype(data.dtype.newbyteorder("<")).tobytes())
        zf.writestr(f"{stem}/version", "3\n")
    return path


def write_state_dict(path: Path, state: dict[str, np.ndarray], legacy: bool = False) -> Path:
    """A plain state_dict, one contiguous storage per tensor (what torch.save(model.state_dict()) writes)."""
    storages, obj = {}, {}
    for i, (name, array) in enumerate(state.items()):
        array = np.array(array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        storages[str(i)] = (STORAGE_NAMES[array.dtype], array.reshape(-1))
        strides = tuple(s // array.itemsize for s in array.strides)
        obj[name] = T(str(i), 0, array.shape, strides)
    return write_pth(path, obj, storages, legacy)


FORMATS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])

# --- reading -------------------------------------------------------------------------------------------------


@FORMATS
def test_state_dict_round_trip_all_dtypes(tmp_path, legacy):
    rng = np.random.default_rng(0)
    state = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "bn.running_var": rng.random(4).astype(np.float64),
             "half": np.array([[1.5, -2.0], [0.25, 65504.0]], np.float16),
             "bn.num_batches_tracked": np.array(12345, np.int64),
             "ints": np.array([-7, 2**31 - 1], np.int32),
             "mask": np.array([True, False, True]),
             "bytes": np.arange(5, dtype=np.uint8)}
    got = read_pth(write_state_dict(tmp_path / "sd.pth", state, legacy))
    assert list(got) == list(state)
    for name, want in state.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want)
    assert got["bn.num_batches_tracked"].ndim == 0 and int(got["bn.num_batches_tracked"]) == 12345


@FORMATS
def test_views_offsets_and_shared_storages(tmp_path, legacy):
    base = np.arange(24, dtype=np.float32)
    storages = {"0": ("FloatStorage", base)}
    obj = {"transposed": T("0", 0, (4, 6), (1, 4)),        # a .t() of a (6, 4) tensor
           "slice": T("0", 5, (2, 3), (6, 2)),             # [0:2, ::2] of a (4, 6) view starting at element 5
           "row": T("0", 18, (6,), (1,)),                  # shares the storage
           "scalar": T("0", 23, (), ())}
    got = read_pth(write_pth(tmp_path / "v.pth", obj, storages, legacy))
    np.testing.assert_array_equal(got["transposed"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(got["slice"], [[5, 7, 9], [11, 13, 15]])
    np.testing.assert_array_equal(got["row"], [18, 19, 20, 21, 22, 23])
    assert got["scalar"].shape == () and float(got["scalar"]) == 23.0
    assert got["transposed"].flags.c_contiguous and got["transposed"].flags.writeable


def test_legacy_storage_views(tmp_path):
    base = np.arange(10, dtype=np.float32)
    obj = {"tail": T("0", 1, (3,), (1,), view=("0v", 4, 6))}  # view of elements 4..9, tensor starts at its 1
    got = read_pth(write_pth(tmp_path / "lv.pth", obj, {"0": ("FloatStorage", base)}, legacy=True))
    np.testing.assert_array_equal(got["tail"], [5, 6, 7])


def test_bfloat16_is_widened_to_float32(tmp_path):
    values = np.array([1.5, -2.25, 2.0**100], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact: these values fit in bfloat16
    got = read_pth(write_pth(tmp_path / "bf.pth", {"w": T("0", 0, (3,), (1,))}, {"0": ("BFloat16Storage", bf16)}))
    assert got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["w"], values)


@FORMATS
def test_checkpoint_dict_with_state_dict_inside(tmp_path, legacy):
    w = np.ones((2, 2), np.float32)
    obj = {"epoch": 3, "state_dict": {"fc.weight": T("0", 0, (2, 2), (2, 1))}}
    got = read_pth(write_pth(tmp_path / "ck.pth", obj, {"0": ("FloatStorage", w.reshape(-1))}, legacy))
    assert list(got) == ["fc.weight"]
    np.testing.assert_array_equal(got["fc.weight"], w)


# --- refusing bad files --------------------------------------------------------------------------------------


@FORMATS
def test_tensor_outside_its_storage_is_refused(tmp_path, legacy):
    path = write_pth(tmp_path / "oob.pth", {"w": T("0", 2, (2, 3), (3, 1))}, {"0": ("FloatStorage",
                                                                                    np.zeros(6, np.float32))},
                     legacy)
    with pytest.raises(TltfError, match=r"oob\.pth: not a readable torch checkpoint .*outside its storage"):
        read_pth(path)


@FORMATS
def test_truncated_file_is_refused(tmp_path, legacy):
    path = write_state_dict(tmp_path / "t.pth", {"w": np.zeros((64, 64), np.float32)}, legacy)
    data = path.read_bytes()
    if legacy:
        path.write_bytes(data[:-100])
    else:  # drop the storage member
        with zipfile.ZipFile(path) as zf:
            members = {n: zf.read(n) for n in zf.namelist() if "/data/" not in n}
        with zipfile.ZipFile(path, "w") as zf:
            for n, b in members.items():
                zf.writestr(n, b)
    with pytest.raises(TltfError, match=r"t\.pth: not a readable torch checkpoint"):
        read_pth(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pth").write_text("hello, I am not a checkpoint\n")
    with pytest.raises(TltfError, match=r"notes\.pth: not a torch checkpoint"):
        read_pth(tmp_path / "notes.pth")
    with pytest.raises(TltfError, match=r"missing\.pth: no such file"):
        read_pth(tmp_path / "missing.pth")
    with zipfile.ZipFile(tmp_path / "z.pth", "w") as zf:
        zf.writestr("readme.txt", "a zip without data.pkl")
    with pytest.raises(TltfError, match=r"z\.pth: a zip file without <name>/data\.pkl"):
        read_pth(tmp_path / "z.pth")
    write_pth(tmp_path / "empty.pth", {"epoch": 3}, {})
    with pytest.raises(TltfError, match=r"empty\.pth: holds no state_dict"):
        read_pth(tmp_path / "empty.pth")


class _System:
    """Pickles as ``os.system(command)`` (written by the standard pickler, as an attacker would)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _payloads(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    return {
        "os.system (GLOBAL)": b"\x80\x02" + _global("os", "system") + _tuple([_str(cmd)]) + b"R.",
        "os.system (reduce, protocol 2)": pickle.dumps(_System(cmd), protocol=2),
        "os.system (STACK_GLOBAL, protocol 4)": pickle.dumps(_System(cmd), protocol=4),
        "builtins.eval": b"\x80\x02" + _global("builtins", "eval")
                         + _tuple([_str(f"__import__('os').system({cmd!r})")]) + b"R.",
        "torch.storage._load_from_bytes": b"\x80\x02" + _global("torch.storage", "_load_from_bytes")
                                          + _tuple([_str("x")]) + b"R.",
    }


@pytest.mark.parametrize("where", ["raw pickle", "zip data.pkl", "legacy object", "legacy magic",
                                   "inside a tensor's hooks"])
def test_malicious_pickle_is_refused_and_has_no_effect(tmp_path, where):
    marker = tmp_path / "pwned"
    for label, payload in _payloads(marker).items():
        path = tmp_path / f"evil_{abs(hash((where, label)))}.pth"
        if where == "raw pickle":
            path.write_bytes(payload)
        elif where == "zip data.pkl":
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr("archive/data.pkl", payload)
                zf.writestr("archive/byteorder", "little")
        elif where == "legacy object":
            write_pth(path, {"w": Raw(payload[2:-1])}, {}, legacy=True)
        elif where == "legacy magic":
            path.write_bytes(payload + pickle.dumps(LEGACY_PROTOCOL, protocol=2))
        else:  # the payload replaces the backward_hooks argument of _rebuild_tensor_v2
            body = (b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + _str("w")
                    + _global("torch._utils", "_rebuild_tensor_v2")
                    + _tuple([_tuple([_str("storage"), _global("torch", "FloatStorage"), _str("0"), _str("cpu"),
                                      _int(1)]) + b"Q", _int(0), _tuple([_int(1)]), _tuple([_int(1)]), b"\x89",
                              payload[2:-1]]) + b"Ru.")
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr("archive/data.pkl", body)
                zf.writestr("archive/data/0", np.zeros(1, np.float32).tobytes())
        with pytest.raises(TltfError) as info:
            read_pth(path)
        message = str(info.value)
        assert path.name in message and "refused to unpickle global" in message, (label, message)
        assert "system" in message or "eval" in message or "_load_from_bytes" in message, (label, message)
        assert "\n" not in message
        assert not marker.exists(), f"{label} in {where} ran code"
    # the marker command itself works: its absence above is the refusal, not a broken payload
    pickle.loads(pickle.dumps(_System(f"touch {marker}")))
    assert marker.exists()


def test_pickle_cannot_tamper_with_tensors_after_the_checks(tmp_path):
    """BUILD (the pickle opcode that sets attributes) cannot widen a rebuilt tensor past its storage after its
    checks, nor alter a stand-in global (the FloatStorage type) for later loads: refused, nothing read."""
    storage = _tuple([_str("storage"), _global("torch", "FloatStorage"), _str("0"), _str("cpu"), _int(4)]) + b"Q"
    tensor = (_global("torch._utils", "_rebuild_tensor_v2")
              + _tuple([storage, _int(0), _tuple([_int(4)]), _tuple([_int(1)]), b"\x89", b"N"]) + b"R")
    widen = b"h\x07N}" + _str("size") + _tuple([_int(1 << 28)]) + b"s\x86b0"  # BINGET 7, (None, {...}), BUILD, POP
    body = (b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + _str("w") + tensor + b"q\x07u"
            + widen + b".")
    path = tmp_path / "tampered.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", body)
        zf.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
    with pytest.raises(TltfError, match=r"tampered\.pth: not a readable .*refused to modify a TensorRef"):
        read_pth(path)
    # renaming the FloatStorage stand-in is refused, and the next load is unaffected
    rename = _global("torch", "FloatStorage") + b"N}" + _str("name") + _str("LongStorage") + b"s\x86b0"
    with zipfile.ZipFile(tmp_path / "rename.pth", "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + rename + _global("collections", "OrderedDict") + b")R.")
    with pytest.raises(TltfError, match=r"rename\.pth: not a readable .*refused to modify a StorageType"):
        read_pth(tmp_path / "rename.pth")
    got = read_pth(write_state_dict(tmp_path / "ok.pth", {"w": np.array([1.5, 2.5], np.float32)}))
    assert got["w"].dtype == np.float32 and got["w"].tolist() == [1.5, 2.5]
