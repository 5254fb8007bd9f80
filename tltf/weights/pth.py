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

**Bounded memory on hostile files.** Nothing a file *declares* is allocated before it is checked against what the
file really holds and against fixed ceilings (the module constants below), so a small file cannot make the reader
grow without bound; each refusal is a one-line :class:`TltfError` naming the file (and the tensor, for storages):

- every pickle is scanned opcode by opcode (:func:`pickletools.genops`, which builds no objects) before it is
  loaded: at most :data:`MAX_PICKLE_OPCODES` opcodes, and memo indices no larger than the opcodes read so far
  (CPython sizes its memo by the largest index, so a 9-byte ``LONG_BINPUT 2**31`` would allocate 32 GB);
  the zip member ``data.pkl`` may inflate to at most :data:`MAX_PICKLE_BYTES`;
- the loaded object is never walked: only the state_dict (the object itself or its ``state_dict``/``model``/...
  entry, top level only) is looked at, so structures that share references (``l = [l, l]`` sixty times: 2**60
  paths through a few hundred opcodes) are never expanded;
- only the storages of the state_dict's tensors are read, lazily: a storage's declared size (elements x element
  size) must fit in its archive member's uncompressed size as the zip header states it (read before inflating),
  in :data:`MAX_TENSOR_BYTES` per tensor and :data:`MAX_TOTAL_BYTES` in all; a compressed member (``torch.save``
  stores members uncompressed) may inflate at most :data:`MAX_INFLATE_RATIO` times its compressed size; legacy
  storages must fit in the rest of the file;
- tensors (strided views) may add at most :data:`MAX_EXPANSION_BYTES` beyond the storages they view (a stride-0
  view of one float could otherwise ask for gigabytes).

>>> state = read_pth("mobilenet_v2-b0353104.pth")           # doctest: +SKIP
>>> state["features.0.0.weight"].shape, state["features.0.0.weight"].dtype   # doctest: +SKIP
((32, 3, 3, 3), dtype('float32'))
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tltf.errors import TltfError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Ceilings for untrusted files (see the module docstring). A torchvision state_dict pickle has about 4 opcodes
# per tensor (MobileNetV2: 11,462 opcodes, 14 MB of storages); the largest torchvision checkpoint is ~0.6 GB.
GiB = 1 << 30
MAX_PICKLE_OPCODES = 2_000_000       # per pickle
MAX_PICKLE_BYTES = 256 << 20         # zip: data.pkl inflated
MAX_TENSOR_BYTES = 2 * GiB           # one storage, one tensor
MAX_TOTAL_BYTES = 4 * GiB            # all storages read
MAX_EXPANSION_BYTES = 256 << 20      # tensors beyond the bytes of the storages they view
MAX_INFLATE_RATIO = 64               # a deflated zip member (deflate reaches ~1000x on zeros; weights ~1.1x)
MAX_ZIP_MEMBERS = 1_000_000

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

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages  # key -> storage, its data read later (only for the state_dict's tensors)

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


class _Limit(Exception):
    """A ceiling was hit: ``str(self)`` is the reason, reported as ``PATH: reason``."""


def _scan_pickle(file, what: str = "pickle") -> None:
    """Walk one pickle's opcodes (from ``file``'s position up to STOP, building nothing): refuse more than
    :data:`MAX_PICKLE_OPCODES` opcodes, or a memo index beyond the opcodes read (real pickles number their memo
    0, 1, 2, ...); malformed opcodes raise ``ValueError``."""
    count = 0
    for opcode, arg, _pos in pickletools.genops(file):
        count += 1
        if count > MAX_PICKLE_OPCODES:
            raise _Limit(f"refused: the {what} has more than {MAX_PICKLE_OPCODES:,} opcodes")
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and not (isinstance(arg, int) and 0 <= arg <= count):
            raise _Limit(f"refused: the {what} stores memo entry {arg} after only {count} opcodes")


def _load_pickle(file, storages: dict[str, _Storage], what: str = "pickle"):
    """Scan (see :func:`_scan_pickle`), rewind, then unpickle with the restricted unpickler."""
    pos = file.tell()
    _scan_pickle(file, what)
    file.seek(pos)
    return _RestrictedUnpickler(file, storages).load()


def read_pth(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a torch checkpoint as ``{name: ndarray}`` (a state_dict, or the one inside a checkpoint dict).

    Raises :class:`TltfError` naming the file for a missing/unreadable file, a refused global (the pickle wanted to
    run code), a malformed storage, a file holding no tensors, or a file that declares more than it holds or more
    than the ceilings allow (see the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise TltfError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except RefusedGlobal as e:
        raise TltfError(f"{path}: refused to unpickle global {e} (only tensors and plain containers are "
                        "allowed; this file may try to run code)") from None
    except _Limit as e:
        raise TltfError(f"{path}: {e}") from None
    except TltfError:
        raise
    except MemoryError:
        raise TltfError(f"{path}: refused: reading it ran out of memory") from None
    except Exception as e:  # anything else a malformed file can raise while being parsed
        raise TltfError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {str(e)[:120]})") from None


def _zip_members(path: Path) -> int | None:
    """The member count the zip's end record declares (read before ``ZipFile`` builds one object per member)."""
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)
        return int(end[zipfile._ECD_ENTRIES_TOTAL]) if end else None
    except (AttributeError, IndexError, OSError, TypeError, ValueError):  # private API: never fatal
        return None


def _check_member(info: zipfile.ZipInfo, nbytes: int, what: str) -> None:
    """Refuse reading ``nbytes`` of member ``info`` before inflating anything (the zip header's sizes)."""
    if info.file_size < nbytes:
        raise _Limit(f"{what} declares {nbytes:,} bytes but its archive member {info.filename} holds "
                     f"{info.file_size:,}")
    if info.compress_type != zipfile.ZIP_STORED and nbytes > MAX_INFLATE_RATIO * info.compress_size + (1 << 20):
        raise _Limit(f"{what}: refused: archive member {info.filename} would inflate {info.compress_size:,} "
                     f"compressed bytes to {nbytes:,} (more than {MAX_INFLATE_RATIO}x; a zip bomb?)")


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    members = _zip_members(path)
    if members is not None and members > MAX_ZIP_MEMBERS:
        raise _Limit(f"refused: the archive declares {members:,} members (at most {MAX_ZIP_MEMBERS:,})")
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkl = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            raise TltfError(f"{path}: a zip file without <name>/data.pkl is not a torch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in infos:
            with zf.open(prefix + "byteorder") as f:
                byteorder = f.read(16).decode(errors="replace").strip()
        if byteorder not in ("little", "big"):
            raise TltfError(f"{path}: unknown byteorder {byteorder!r}")

        info = infos[pkl[0]]
        if info.file_size > MAX_PICKLE_BYTES:
            raise _Limit(f"refused: {info.filename} declares {info.file_size:,} bytes (at most "
                         f"{MAX_PICKLE_BYTES:,})")
        _check_member(info, info.file_size, info.filename)
        with zf.open(info) as f:
            body = f.read(MAX_PICKLE_BYTES + 1)
        storages: dict[str, _Storage] = {}
        obj = _load_pickle(io.BytesIO(body), storages, info.filename)
        del body
        budget = _Budget()

        def load(storage: _Storage, name: str) -> None:
            if storage.data is not None:
                return
            dtype = storage.type.dtype
            nbytes = storage.numel * dtype.itemsize
            what = f"tensor {name!r} (storage {storage.key})"
            budget.storage(nbytes, what)
            member = infos.get(f"{prefix}data/{storage.key}")
            if member is None:
                raise pickle.UnpicklingError(f"storage {storage.key} missing from the archive")
            _check_member(member, nbytes, what)
            with zf.open(member) as f:
                raw = f.read(nbytes)
            if len(raw) < nbytes:
                raise pickle.UnpicklingError(f"storage {storage.key} is truncated")
            dt = dtype.newbyteorder(">") if byteorder == "big" and dtype.itemsize > 1 else dtype
            data = np.frombuffer(raw, dtype=dt, count=storage.numel)
            storage.data = data.astype(dtype) if dt != dtype else data  # read-only: tensors are copies

        return _materialise(_state_dict(obj, path), load, budget)


def _load_legacy(path: Path) -> dict[str, np.ndarray]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        storages: dict[str, _Storage] = {}

        def load(what: str):
            return _load_pickle(f, storages, what)

        try:
            magic = load("pickle")
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            if isinstance(e, RefusedGlobal):
                raise
            raise TltfError(f"{path}: not a torch checkpoint (neither a zip archive nor a legacy pickle)") from None
        if magic != LEGACY_MAGIC:
            raise TltfError(f"{path}: not a torch checkpoint (no torch magic number)")
        if load("protocol pickle") != LEGACY_PROTOCOL:
            raise TltfError(f"{path}: unsupported legacy torch protocol")
        info = load("system-info pickle")
        little = not isinstance(info, dict) or info.get("little_endian", True)
        obj = load("object pickle")
        keys = load("storage-key pickle")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise pickle.UnpicklingError("malformed storage key list")
        budget = _Budget()
        for key in keys:
            storage = storages.get(key)
            if storage is None:
                raise pickle.UnpicklingError(f"storage {key} is listed but never used")
            if storage.data is not None:
                raise pickle.UnpicklingError(f"storage {key} is listed twice")
            (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
            if numel != storage.numel:
                raise pickle.UnpicklingError(f"storage {key} has {numel} elements, expected {storage.numel}")
            dtype = storage.type.dtype
            nbytes = numel * dtype.itemsize
            if nbytes > size - f.tell():
                raise pickle.UnpicklingError(f"storage {key} is truncated")
            budget.storage(nbytes, f"storage {key}")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise pickle.UnpicklingError(f"storage {key} is truncated")
            dt = dtype if little or dtype.itemsize == 1 else dtype.newbyteorder(">")
            data = np.frombuffer(raw, dtype=dt)
            storage.data = data.astype(dtype) if dt != dtype else data  # read-only: tensors are copies

        def load_storage(storage: _Storage, name: str) -> None:
            pass  # legacy storages follow the pickle and were all read above

        return _materialise(_state_dict(obj, path), load_storage, budget)


class _Budget:
    """Bytes read into storages and materialised as tensors, against the ceilings."""

    def __init__(self):
        self.stored = 0
        self.tensors = 0

    def storage(self, nbytes: int, what: str) -> None:
        if nbytes > MAX_TENSOR_BYTES:
            raise _Limit(f"{what} declares {nbytes:,} bytes, more than the {MAX_TENSOR_BYTES:,} allowed per tensor")
        self.stored += nbytes
        if self.stored > MAX_TOTAL_BYTES:
            raise _Limit(f"{what}: refused: the storages add up to more than {MAX_TOTAL_BYTES:,} bytes")

    def tensor(self, nbytes: int, what: str) -> None:
        if nbytes > MAX_TENSOR_BYTES:
            raise _Limit(f"{what} would take {nbytes:,} bytes, more than the {MAX_TENSOR_BYTES:,} allowed per tensor")
        self.tensors += nbytes
        if self.tensors > self.stored + MAX_EXPANSION_BYTES:
            raise _Limit(f"{what}: refused: the tensors view {self.tensors:,} bytes out of {self.stored:,} bytes of "
                         f"storage (overlapping or stride-0 views beyond {MAX_EXPANSION_BYTES:,} bytes)")


def _materialise(refs: dict[str, _TensorRef], load, budget: _Budget) -> dict[str, np.ndarray]:
    """The state_dict's tensors as contiguous ndarrays, in file order; ``load(storage, name)`` reads a storage's
    data first (zip: lazily, only the storages these tensors use)."""
    out = {}
    for name, ref in refs.items():
        storage = ref.storage
        if not isinstance(storage, _Storage) or not isinstance(storage.type, _StorageType):
            raise pickle.UnpicklingError(f"tensor {name} without a storage")
        load(storage, name)
        size = ref.size
        if not (isinstance(size, tuple) and all(map(_is_count, size))):
            raise pickle.UnpicklingError(f"malformed tensor {name}")
        budget.tensor(math.prod(size) * storage.type.dtype.itemsize, f"tensor {name!r}")
        out[name] = _to_array(ref)
    return out


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


def _state_dict(obj, path: Path) -> dict[str, _TensorRef]:
    """The ``{name: tensor}`` mapping in a loaded checkpoint: the object itself or a ``state_dict``/``model`` entry.

    Only these (at most two) mappings are looked at, never the rest of the object: a pickle can share references
    (a list holding the same list twice, sixty levels deep) so that walking it would never end."""

    def tensors(d) -> dict | None:
        if isinstance(d, dict) and d and all(isinstance(k, str) for k in d) \
                and all(isinstance(v, _TensorRef) for v in d.values()):
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
