"""The web target: an exported ONNX classifier as a static folder that classifies images in the browser.

``build_web_app("exported/flowers.onnx", "exported/flowers.web")`` writes::

    flowers.web/
      index.html          drop images on the page (or choose them): top-k classes, scores, ms/image
      app.js              loads the model in onnxruntime-web (wasm backend) and classifies
      preprocess.js       the pixels tltf's Python runtime computes (tltf.runtime.images), in JavaScript
      model.onnx          the model, as exported
      model.json          its contract: input name and size, outputs, tasks, top-k, runtime version
      labels.json         class names
      ort/                onnxruntime-web's wasm build: ort.wasm.min.js, ort-wasm-simd-threaded.{mjs,wasm}

The page needs nothing from the network: onnxruntime-web comes from the npm registry **at build time**
(``npm pack onnxruntime-web@`` :data:`ORT_WEB_VERSION`), cached under ``$TLTF_CACHE/npm`` (default
``~/.cache/tltf``), and only the three files its wasm backend loads are copied. WebAssembly must be served over
http(s), not opened as a file: ``python -m http.server -d flowers.web 8000``, then http://localhost:8000/.

**Preprocessing.** The page decodes with the browser (no colour-profile conversion, no EXIF rotation, as Pillow)
and resizes with a line-for-line port of Pillow's float32 BILINEAR resample (``preprocess.js``): bit-identical to
:func:`tltf.runtime.images.resize` on random images shrunk and enlarged (1.5e-5 of 255 in one mixed up/down case),
and Chromium's pixels equal Pillow's exactly on the 20 ImageNet photos of the foolbox wheel and on PNG (RGB, grey,
palette), BMP and GIF files (``tests/test_web_target.py``). Letting the canvas resize instead (``drawImage`` to
224x224) moves pixels by up to 141 (low smoothing) or 62 (high) of 255 and changed MobileNetV2's top-1 on 2 and 1
of those 20 photos (scores by up to 0.54 and 0.29): hence the port. Known differences: the colour of
semi-transparent pixels (a canvas premultiplies alpha; Pillow drops it) and 16-bit PNGs.

**Measured** (``benchmarks/web_runtime.json``; MobileNetV2 with ImageNet weights, the 20 photos, Chromium 156,
onnxruntime-web 1.31.1 against onnxruntime 1.32 in Python): fp32 in the page agrees with Python on top-1 20/20,
scores within 1.6e-6. An int8 (QDQ) file agrees 20/20 (within 0.12) with onnxruntime run without graph
optimisations, but 17/20 (up to 0.83) with onnxruntime's fused int8 kernels on this AVX2 CPU without VNNI, which
are the outlier. On a 2-core machine shared with other work (load average 10-15) one wasm thread took a median of
193 ms per fp32 image (min 144) against 85 ms (min 38) for onnxruntime in Python on one thread; int8 254 ms in the
page (slower than fp32 there) against 27 ms in Python.

**Threads.** onnxruntime-web runs multi-threaded only on a cross-origin-isolated page (COOP/COEP headers), which
``python -m http.server`` does not send: the page then runs one thread, and shows the count. (Served with those
headers, :func:`serve_folder` ``isolated=True``, two threads were slower on the loaded 2-core machine above: 361
ms against 193.)

>>> report = build_web_app(Path("exported/flowers.onnx"), Path("exported/flowers.web"))   # doctest: +SKIP
>>> report["serve"]                                                                         # doctest: +SKIP
'python -m http.server -d exported/flowers.web 8000'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from tltf.errors import TltfError

#: the onnxruntime-web release the page ships (npm registry); its files are cached per version
ORT_WEB_VERSION = "1.31.1"
#: what the page loads from the package's dist/: the wasm-only build and the module + binary it imports
ORT_WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: the page's own files, shipped as package data in tltf/export/web_page/
PAGE_FILES = ("index.html", "app.js", "preprocess.js")
#: a marker in model.json: a folder holding it may be replaced by a new build
MARKER = "tltf_web"
DEFAULT_TOP_K = 5
#: seconds ``npm pack`` may take (a 34 MB tarball)
NPM_TIMEOUT_S = 300

#: what npm prints when it cannot reach the registry at all
_NETWORK = re.compile(r"ENOTFOUND|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EAI_AGAIN|ENETUNREACH|EHOSTUNREACH|"
                      r"network|socket hang up|request to \S+ failed", re.IGNORECASE)


def cache_root() -> Path:
    return Path(os.environ.get("TLTF_CACHE", Path.home() / ".cache" / "tltf"))


def _npm_error(output: str) -> str:
    """npm's own error lines (``npm error ...``), joined into one short line."""
    lines = [re.sub(r"^npm (error|ERR!)\s*", "", line).strip() for line in output.splitlines()
             if re.match(r"^npm (error|ERR!)", line)]
    lines = [line for line in lines if line and not line.startswith(("A complete log", "Log files"))]
    return " ".join(lines or [line.strip() for line in output.splitlines() if line.strip()][-1:] or ["no output"])[:300]


def ort_web_files(version: str = ORT_WEB_VERSION) -> Path:
    """The folder holding onnxruntime-web ``version``'s :data:`ORT_WEB_FILES` (and its ``package.json``), fetched
    once with ``npm pack`` from the npm registry and cached under ``$TLTF_CACHE/npm/onnxruntime-web-VERSION``.

    No npm on the PATH, an unreachable registry or a release without those files is a one-line
    :class:`TltfError`."""
    folder = cache_root() / "npm" / f"onnxruntime-web-{version}"
    if all((folder / name).is_file() for name in (*ORT_WEB_FILES, "package.json")):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise TltfError(f"--target web: npm not found on the PATH; it brings onnxruntime-web {version} from the npm "
                        "registry at build time (install Node.js and npm, e.g. apt-get install npm)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".onnxruntime-web-{version}-") as tmp:
        tmp = Path(tmp)
        command = [npm, "pack", f"onnxruntime-web@{version}", "--pack-destination", str(tmp), "--json",
                   "--prefer-offline", "--fetch-retries=1", "--fetch-retry-mintimeout=2000",
                   "--fetch-retry-maxtimeout=10000", "--no-audit", "--no-fund", "--update-notifier=false",
                   "--loglevel=error"]
        try:
            done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise TltfError(f"--target web: npm pack onnxruntime-web@{version} timed out after {NPM_TIMEOUT_S} s "
                            "(is the npm registry reachable?)") from None
        output = done.stdout + "\n" + done.stderr
        tarballs = sorted(tmp.glob("onnxruntime-web-*.tgz"))
        if done.returncode != 0 or not tarballs:
            reason = _npm_error(output)
            what = "the npm registry is unreachable" if _NETWORK.search(output) else "npm pack failed"
            raise TltfError(f"--target web: {what}: cannot fetch onnxruntime-web@{version} ({reason})")
        integrity = _integrity(done.stdout)
        staged = tmp / "files"
        staged.mkdir()
        wanted = {f"package/dist/{name}": name for name in ORT_WEB_FILES} | {"package/package.json": "package.json"}
        try:
            with tarfile.open(tarballs[0]) as tar:
                for member in tar.getmembers():
                    if member.name in wanted and member.isfile():
                        with tar.extractfile(member) as src, open(staged / wanted[member.name], "wb") as dst:
                            shutil.copyfileobj(src, dst)
        except (tarfile.TarError, OSError) as e:
            raise TltfError(f"--target web: onnxruntime-web@{version} from npm is not a readable package "
                            f"({type(e).__name__}: {str(e)[:100]})") from None
        missing = [name for name in wanted.values() if not (staged / name).is_file()]
        if missing:
            raise TltfError(f"--target web: onnxruntime-web@{version} has no {', '.join(missing)} (the page needs "
                            f"{', '.join(ORT_WEB_FILES)})")
        (staged / "npm.json").write_text(json.dumps({"integrity": integrity, "tarball": tarballs[0].name}))
        try:
            staged.rename(folder)
        except OSError:  # another build cached it meanwhile
            if not folder.is_dir():
                raise
    return folder


def _integrity(stdout: str) -> str | None:
    """The tarball's ``integrity`` (sha512, checked by npm against the registry) from ``npm pack --json``."""
    try:
        found = json.loads(stdout[stdout.index("["):])
        return found[0].get("integrity")
    except (ValueError, IndexError, KeyError, AttributeError, TypeError):
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_config(onnx_path: Path, top_k: int = DEFAULT_TOP_K) -> tuple[dict, list[str] | None]:
    """``(model.json, class names)`` for the page, from the file's contract as onnxruntime reads it: a file tltf
    cannot run (:func:`tltf.runtime.onnx_model.read_contract`) or one whose input is not float32 is a one-line
    :class:`TltfError`."""
    from tltf.runtime.onnx_model import make_session, read_contract, read_tasks

    session = make_session(onnx_path, threads=1, spinning=False)
    metadata, image_size, class_names = read_contract(session, onnx_path)
    graph_in = session.get_inputs()[0]
    if graph_in.type != "tensor(float)":
        raise TltfError(f"{onnx_path}: the web page feeds float32 pixels; this file's input is {graph_in.type}")
    outputs = [o.name for o in session.get_outputs()]
    tasks = read_tasks(metadata, outputs, onnx_path)
    if tasks:
        heads = [{"name": name, "classes": classes} for name, classes in tasks]
    else:
        name = metadata.get("output_name") if metadata.get("output_name") in outputs else outputs[0]
        heads = [{"name": name, "classes": None}]
    config = {
        MARKER: 1,
        "model": "model.onnx",
        "input_name": graph_in.name,
        "image_size": list(image_size),
        "outputs": heads,
        "top_k": int(top_k),
        "backbone": metadata.get("backbone"),
        "precision": metadata.get("precision"),
        "max_pixels": _max_pixels(),
        "onnxruntime_web": None,  # filled in by build_web_app
    }
    return config, class_names


def _max_pixels() -> int:
    from tltf.runtime.images import MAX_IMAGE_PIXELS

    return MAX_IMAGE_PIXELS


def _page_source() -> Path:
    return Path(__file__).with_name("web_page")


def _check_out_dir(out_dir: Path) -> None:
    """``out_dir`` may be new, empty, or a folder an earlier build wrote (its model.json has the marker); anything
    else is refused rather than replaced."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise TltfError(f"{out_dir}: exists and is a file, not a folder for the web page")
    if not any(out_dir.iterdir()):
        return
    try:
        ours = json.loads((out_dir / "model.json").read_text()).get(MARKER)
    except (OSError, ValueError, AttributeError):
        ours = None
    if not ours:
        raise TltfError(f"{out_dir}: exists and is not a folder tltf's web target wrote; choose another output "
                        "folder or remove it")


def build_web_app(onnx_path: Path, out_dir: Path, *, top_k: int = DEFAULT_TOP_K,
                  ort_version: str = ORT_WEB_VERSION) -> dict:
    """Write the static web page for the ONNX classifier ``onnx_path`` into ``out_dir`` (see the module docstring)
    and return a report: the files and their sizes, the onnxruntime-web version and how to serve the folder.

    The folder is built beside ``out_dir`` and moved into place when complete: a failed build leaves no
    half-written folder, and an earlier build in ``out_dir`` is replaced only once the new one is whole."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if top_k < 1:
        raise TltfError(f"--top-k {top_k}: must be at least 1")
    config, class_names = model_config(onnx_path, top_k)
    _check_out_dir(out_dir)
    runtime = ort_web_files(ort_version)
    package = json.loads((runtime / "package.json").read_text())
    npm = json.loads((runtime / "npm.json").read_text()) if (runtime / "npm.json").is_file() else {}
    config["onnxruntime_web"] = {"version": package.get("version", ort_version), "backend": "wasm",
                                 "files": [f"ort/{name}" for name in ORT_WEB_FILES],
                                 "licence": package.get("license"), "npm_integrity": npm.get("integrity")}

    from tltf.atomic import make_folder, write_failed

    make_folder(out_dir.parent)
    _clean_stale(out_dir)
    try:
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tltf-web-{os.getpid()}-"))
    except OSError as e:
        raise write_failed(out_dir, e) from None
    try:
        for name in PAGE_FILES:
            shutil.copyfile(_page_source() / name, staging / name)
        shutil.copyfile(onnx_path, staging / "model.onnx")
        (staging / "ort").mkdir()
        for name in ORT_WEB_FILES:
            shutil.copyfile(runtime / name, staging / "ort" / name)
        (staging / "labels.json").write_text(json.dumps(class_names, ensure_ascii=False, indent=0) + "\n")
        (staging / "model.json").write_text(json.dumps(config, indent=2) + "\n")
        _swap_in(staging, out_dir)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise write_failed(out_dir, e) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    sizes = {str(p.relative_to(out_dir)): p.stat().st_size for p in files}
    return {
        "target": "web",
        "folder": str(out_dir),
        "model": str(onnx_path),
        "model_sha256": _sha256(out_dir / "model.onnx"),
        "image_size": config["image_size"],
        "classes": len(class_names) if class_names else None,
        "outputs": [head["name"] for head in config["outputs"]],
        "onnxruntime_web": config["onnxruntime_web"],
        "files": sizes,
        "bytes": sum(sizes.values()),
        "serve": f"python -m http.server -d {shlex.quote(str(out_dir))} 8000",
        "url": "http://localhost:8000/",
        "note": "open it over http (WebAssembly is not loaded from file://); one wasm thread unless the server "
                "sends COOP/COEP headers",
    }


@contextlib.contextmanager
def serve_folder(folder: Path, port: int = 0, isolated: bool = False):
    """Serve ``folder`` over http on 127.0.0.1 (``port`` 0: a free one) in a background thread while the block
    runs; yields the page's URL. ``isolated`` sends the COOP/COEP headers under which onnxruntime-web may run
    several wasm threads. (``python -m http.server -d FOLDER`` serves the same files, without those headers.)"""
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
                          ".json": "application/json", ".onnx": "application/octet-stream"}

        def end_headers(self):
            if isolated:
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _clean_stale(out_dir: Path) -> None:
    """Remove the staging folders a killed build of ``out_dir`` left beside it (those of a process that is gone)."""
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.tltf-web-(?:old-)?(\d+)(?:-\w+)?$")
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        found = pattern.match(entry.name)
        if not found or not entry.is_dir():
            continue
        try:
            os.kill(int(found.group(1)), 0)
        except ProcessLookupError:
            if ".tltf-web-old-" in entry.name and not out_dir.exists():
                entry.rename(out_dir)  # killed between the two renames: the earlier build goes back
            else:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:  # alive, someone else's
            pass


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Move the finished ``staging`` folder to ``out_dir``, replacing an earlier build only after the new one is
    in place."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.tltf-web-old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    try:
        staging.rename(out_dir)
    except OSError:
        if old is not None:
            old.rename(out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
