"""Read PyTorch ``.pth`` checkpoints into numpy **without importing torch** and without unrestricted unpickling.

Both formats written by ``torch.save`` are understood:

- **zip** (torch >= 1.6): a zip archive ``<name>/data.pkl`` (the pickled object) plus one raw little-endian byte
  file ``<name>/data/<key>`` per storage (and ``<name>/byteorder``).
- **legacy** (pre-zip, ``_use_new_zipfile_serialization=False``): five pickles back to back -- magic number,
  protocol version, system info, the object, the list of storage keys -- followed, for each key in that list, by
  an 8-byte element count and the storage's raw bytes.

Tensors are pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` calls whose
``storage`` is a *persistent id* ``("storage", torch.FloatStorage, key, location, numel[, view])``. The
:class:`_RestrictedUnpickler` resolves exactly those globals to harmless local stand-ins (plus
``collections.OrderedDict``) and refuses every other global -- ``os.system``, ``builtins.eval``,
``torch.storage._load_from_bytes`` … -- *before* anything is called, with a :class:`TltfError` naming the file and
the global. Tensor views are checked against their storage's bounds before numpy reads them; the stand-ins refuse
the BUILD opcode (``__setstate__``) and each load gets fresh ones, so a pickle can neither alter a tensor after
those checks nor leave anything changed for later loads.

>>> state = read_pth("mobilenet_v2-b0353104.pth")           # doctest: +SKIP
>>> state["features.0.0.weight"].shape, state["features.0.0.weight"].dtype   # doctest: +SKIP
((32, 3, 3, 3), dtype('float32'))
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tltf.errors import TltfError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype (bfloat16 is read as uint16 and widened to float32)
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _Sealed:
    """Base of the stand-ins: a pickle's BUILD opcode (``__setstate__``) cannot alter them after they are made."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"refused to modify a {type(self).__name__.strip('_')}")


class _StorageType(_Sealed):
    """Stand-in for ``torch.FloatStorage`` & co.: only its name (and so its dtype) matters."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __eq__(self, other):
        return isinstance(other, _StorageType) and other.name == self.name

    __hash__ = None

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass(slots=True, eq=False)
class _Storage(_Sealed):
    """A storage named by the pickle; its bytes arrive later (legacy) or are read from the zip (zip format)."""

    type: _StorageType
    key: str
    numel: int
    data: np.ndarray | None = None  # 1-D, ``numel`` elements, once read


@dataclass(slots=True, eq=False)
class _TensorRef(_Sealed):
    """What ``_rebuild_tensor_v2`` returns here: a strided view of a storage, materialised after loading."""

    storage: _Storage
    offset: int
    size: tuple
    stride: tuple
    view_offset: int = 0  # legacy views: element offset of the viewed storage inside its root storage


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Stand-in for ``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2``: records, never computes."""
    if not isinstance(storage, (_Storage, _ViewStorage)):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    for v in (storage_offset, *size, *stride):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise pickle.UnpicklingError("tensor with a non-integer or negative size, stride or offset")
    if len(size) != len(stride):
        raise pickle.UnpicklingError("tensor whose size and stride differ in length")
    if isinstance(storage, _ViewStorage):
        return _TensorRef(storage.root, storage_offset, tuple(size), tuple(stride), view_offset=storage.offset)
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_ignored):
    """Stand-in for ``torch._utils._rebuild_parameter`` (a Parameter is its tensor here)."""
    return data


@dataclass(slots=True, eq=False)
class _ViewStorage(_Sealed):
    """A legacy storage view: ``numel`` elements of ``root`` starting at ``offset``."""

    root: _Storage
    offset: int
    numel: int


# The globals a torch state_dict pickle needs. find_class hands out a *fresh* stand-in for each request, so a
# pickle that mutates what it got (the BUILD opcode) changes nothing outside its own load.
_REBUILDERS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


def _allowed_global(module: str, name: str):
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict  # a builtin type: immutable
    if (module, name) in _REBUILDERS:
        function = _REBUILDERS[(module, name)]
        return lambda *args: function(*args)
    if module == "torch" and name in STORAGE_DTYPES:
        return _StorageType(name)
    return None


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds tensors and plain containers (see the module docstring)."""

    def __init__(self, file, storages: dict[str, _Storage], open_storage=None):
        super().__init__(file)
        self.storages = storages
        self.open_storage = open_storage  # zip format: key, dtype, numel -> 1-D array

    def find_class(self, module, name):
        found = _allowed_global(module, name)
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:60]}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int) \
                or numel < 0:
            raise pickle.UnpicklingError("malformed storage reference")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(stype, key, numel)
            if self.open_storage is not None:
                storage.data = self.open_storage(key, stype.dtype, numel)
        elif storage.type != stype:
            raise pickle.UnpicklingError(f"storage {key} used with two dtypes")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # legacy: (view_key, offset, view_numel)
            _vkey, offset, vnumel = view
            if not (isinstance(offset, int) and isinstance(vnumel, int) and 0 <= offset
                    and offset + vnumel <= storage.numel):
                raise pickle.UnpicklingError(f"storage view outside storage {key}")
            return _ViewStorage(storage, offset, vnumel)
        return storage


def read_pth(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a torch checkpoint as ``{name: ndarray}`` (a state_dict, or the one inside a checkpoint dict).

    Raises :class:`TltfError` naming the file for a missing/unreadable file, a refused global (the pickle wanted to
    run code), a malformed storage, or a file holding no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise TltfError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path)
        else:
            obj = _load_legacy(path)
    except RefusedGlobal as e:
        raise TltfError(f"{path}: refused to unpickle global {e} (only tensors and plain containers are "
                        "allowed; this file may try to run code)") from None
    except TltfError:
        raise
    except Exception as e:  # anything else a malformed file can raise while being parsed
        raise TltfError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    return _state_dict(obj, path)


def _load_zip(path: Path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            raise TltfError(f"{path}: a zip file without <name>/data.pkl is not a torch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if byteorder not in ("little", "big"):
            raise TltfError(f"{path}: unknown byteorder {byteorder!r}")

        def open_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            member = f"{prefix}data/{key}"
            if member not in names:
                raise pickle.UnpicklingError(f"storage {key} missing from the archive")
            raw = zf.read(member)
            if len(raw) < numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key} is truncated")
            dt = dtype.newbyteorder(">") if byteorder == "big" and dtype.itemsize > 1 else dtype
            return np.frombuffer(raw, dtype=dt, count=numel).astype(dtype)

        storages: dict[str, _Storage] = {}
        return _materialise(_RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storages, open_storage).load())


def _load_legacy(path: Path):
    size = path.stat().st_size
    with open(path, "rb") as f:
        storages: dict[str, _Storage] = {}

        def load():
            return _RestrictedUnpickler(f, storages).load()

        try:
            magic = load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            if isinstance(e, RefusedGlobal):
                raise
            raise TltfError(f"{path}: not a torch checkpoint (neither a zip archive nor a legacy pickle)") from None
        if magic != LEGACY_MAGIC:
            raise TltfError(f"{path}: not a torch checkpoint (no torch magic number)")
        if load() != LEGACY_PROTOCOL:
            raise TltfError(f"{path}: unsupported legacy torch protocol")
        info = load()
        little = not isinstance(info, dict) or info.get("little_endian", True)
        obj = load()
        keys = load()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise pickle.UnpicklingError("malformed storage key list")
        for key in keys:
            storage = storages.get(key)
            if storage is None:
                raise pickle.UnpicklingError(f"storage {key} is listed but never used")
            (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
            if numel != storage.numel:
                raise pickle.UnpicklingError(f"storage {key} has {numel} elements, expected {storage.numel}")
            dtype = storage.type.dtype
            if numel * dtype.itemsize > size - f.tell():
                raise pickle.UnpicklingError(f"storage {key} is truncated")
            raw = f.read(numel * dtype.itemsize)
            if len(raw) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key} is truncated")
            dt = dtype if little or dtype.itemsize == 1 else dtype.newbyteorder(">")
            storage.data = np.frombuffer(raw, dtype=dt).astype(dtype)
        return _materialise(obj)


def _materialise(obj):
    """Replace every :class:`_TensorRef` inside ``obj`` (dicts, lists, tuples) by a contiguous ndarray."""
    if isinstance(obj, _TensorRef):
        return _to_array(obj)
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _to_array(ref: _TensorRef) -> np.ndarray:
    """The tensor as a new C-contiguous array; every index it reads is checked against the storage's real data
    (re-validated here because a pickle can alter the records it created with BUILD)."""
    storage = ref.storage
    data = getattr(storage, "data", None)
    if not isinstance(storage, _Storage) or not isinstance(data, np.ndarray) or data.ndim != 1:
        raise pickle.UnpicklingError("tensor without storage data")
    size, stride = ref.size, ref.stride
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(map(_is_count, (*size, *stride, ref.offset, ref.view_offset)))):
        raise pickle.UnpicklingError(f"malformed tensor on storage {storage.key}")
    start = ref.view_offset + ref.offset
    if all(size):
        last = start + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= data.size:
            raise pickle.UnpicklingError(f"tensor outside its storage {storage.key}")
        item = data.itemsize
        array = np.lib.stride_tricks.as_strided(data[start:], shape=size, strides=tuple(s * item for s in stride),
                                                writeable=False)
        array = np.array(array, copy=True, order="C")
    else:
        array = np.zeros(size, dtype=data.dtype)
    if isinstance(storage.type, _StorageType) and storage.type.name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _state_dict(obj, path: Path) -> dict[str, np.ndarray]:
    """The ``{name: array}`` mapping in a loaded checkpoint: the object itself or a ``state_dict``/``model`` entry."""

    def tensors(d) -> dict | None:
        if isinstance(d, dict) and d and all(isinstance(k, str) for k in d) \
                and all(isinstance(v, np.ndarray) for v in d.values()):
            return dict(d)
        return None

    found = tensors(obj)
    if found is None and isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            found = tensors(obj.get(key))
            if found is not None:
                break
    if found is None:
        raise TltfError(f"{path}: holds no state_dict (a mapping of tensor names to tensors)")
    return found
