"""What the inference runtime costs: startup time, memory and installed size of ``tltf`` on an ``.onnx`` file.

For each ``tltf`` given (``--target LABEL=COMMAND``: an executable, or a command such as ``python -m tltf``, after
settings such as ``PYTHONPATH=/tmp/tltf_old`` to run another checkout), medians of ``--runs`` runs each of:

- ``tltf --help``: wall time;
- ``tltf predict MODEL.onnx IMAGE.jpg``: wall time and peak RSS (``/usr/bin/time -v``; else ``getrusage``);
- ``tltf serve MODEL.onnx``: time from spawn to the first 200 of ``/v2/health/ready``, then (1 s later) the idle
  server's RSS and thread count (``/proc/PID/status``), then SIGTERM;
- ``tltf bench MODEL.onnx --iterations 3 --batch-sizes 1``: wall time (and its exit status);
- the environment it is installed in (``--venv LABEL=PATH``, or one built here with ``--build-venv LABEL=SRC``):
  site-packages' size on disk (as ``du``) and its file contents, and the number of installed distributions.

The targets take turns (round i runs each once), so that other work on the machine weighs on them alike; each is
stored under its label in ``--out`` (other labels kept), the old and the new ``tltf`` side by side. The model is a
cnn_small export (64 px, 3 classes, random weights; built once in ``--work`` with the training stack of the Python
running this script) and the image a real ImageNet photo (512x512 JPEG, from the foolbox wheel:
:func:`tltf.data.offline.imagenet_photos`).

This machine (issue 25), new = ``pip install .`` alone in a fresh venv, old = commit cdf877f (full install),
measured in turns::

    git worktree add /tmp/tltf_old cdf877f
    python -m venv /tmp/oldv && /tmp/oldv/bin/pip install /tmp/tltf_old     # the old install's size only
    PY=$(python -c 'import sys; print(sys.executable)')     # the interpreter, not a pyenv shim (timed too)
    python benchmarks/runtime_startup.py --runs 7 --build-venv new=. --target "new-full-install=$(dirname $PY)/tltf" \\
        --target "old=PYTHONPATH=/tmp/tltf_old $PY -m tltf" --venv old=/tmp/oldv
    git worktree remove --force /tmp/tltf_old

(new-full-install: this checkout's code with the training stack installed, as ``pip install -e ".[dev]"``.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: issue 25's targets for the runtime-only install
TARGETS = {"install_mb": 300, "serve_ready_s": 1.0, "serve_idle_rss_mb": 150, "predict_s": 1.0, "help_s": 0.5}
TIME_V = "/usr/bin/time"


# --- the model and the image -----------------------------------------------------------------------------------

def make_inputs(work: Path) -> tuple[Path, Path]:
    """``cnn_small.onnx`` (built once) and ``photo.jpg`` in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    onnx_path, photo = work / "cnn_small.onnx", work / "photo.jpg"
    if not onnx_path.exists():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from tltf.export.onnx import export_onnx
        from tltf.models.classifier import build_classifier

        model = build_classifier("cnn_small", ["a", "b", "c"], image_size=64, weights="none")
        model.save(work / "cnn_small.keras")
        export_onnx(str(work / "cnn_small.keras"), onnx_path)
    if not photo.exists():
        from tltf.data.offline import imagenet_photos

        shutil.copy(imagenet_photos()[0][0], photo)
    return onnx_path, photo


# --- one target ------------------------------------------------------------------------------------------------

class Target:
    """How to run one ``tltf``: the command and the environment."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.command = command
        self.env = {**os.environ, **env}
        if "PYTHONPATH" not in env:
            self.env.pop("PYTHONPATH", None)
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    def argv(self, *args) -> list[str]:
        return [*self.command, *map(str, args)]


def timed(target: Target, args, cwd: Path) -> dict:
    """Wall time, peak RSS and exit status of one run of ``tltf ARGS``."""
    if os.access(TIME_V, os.X_OK):
        start = time.perf_counter()
        proc = subprocess.run([TIME_V, "-v", *target.argv(*args)], env=target.env, cwd=cwd, capture_output=True,
                              text=True)
        wall = time.perf_counter() - start
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rss_mb = int(found.group(1)) / 1024 if found else None
    else:  # the largest child so far: right when each run is the largest, as here
        start = time.perf_counter()
        proc = subprocess.run(target.argv(*args), env=target.env, cwd=cwd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    error = None
    if proc.returncode != 0:
        stderr = proc.stderr.split("\tCommand being timed:")[0]  # what /usr/bin/time -v adds
        lines = [line for line in stderr.splitlines()
                 if line.strip() and not line.startswith("Command exited with non-zero status")]
        error = lines[-1] if lines else f"exit status {proc.returncode}"
    return {"wall_s": wall, "rss_mb": rss_mb, "exit_status": proc.returncode, "error": error}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_once(target: Target, model: Path, cwd: Path, timeout_s: float = 120) -> dict:
    """Spawn ``tltf serve MODEL``, time it to the first 200 of /v2/health/ready, read its idle RSS and threads."""
    port = free_port()
    log = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(target.argv("serve", model, "--port", port, "--log-level", "warning"), env=target.env,
                            cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready_s = None
        while time.perf_counter() - start < timeout_s:
            if proc.poll() is not None:
                break
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    ready_s = time.perf_counter() - start
                    break
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(0.005)
        if ready_s is None:
            log.seek(0)
            return {"ready_s": None, "error": log.read().decode(errors="replace")[-2000:]}
        time.sleep(1.0)  # idle
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
        threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
        return {"ready_s": ready_s, "idle_rss_mb": rss_kb / 1024, "threads": threads}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def summary(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "runs": [round(v, 4) for v in values]}


def measure(targets: dict[str, Target], model: Path, photo: Path, runs: int, work: Path) -> dict[str, dict]:
    """Each measurement ``runs`` times per target, in rounds (round i runs every target once, in turn), so that
    other work on the machine weighs on all targets alike."""
    cwd = work / "cwd"
    cwd.mkdir(exist_ok=True)
    bench_args = ["bench", model, "--iterations", 3, "--batch-sizes", 1, "--json", cwd / "bench.json"]
    rows: dict[str, dict[str, list]] = {label: {"help": [], "predict": [], "serve": [], "bench": []}
                                        for label in targets}
    for i in range(runs):
        for label, target in targets.items():
            rows[label]["help"].append(timed(target, ["--help"], cwd))
            rows[label]["predict"].append(timed(target, ["predict", model, photo], cwd))
            rows[label]["serve"].append(serve_once(target, model, cwd))
            rows[label]["bench"].append(timed(target, bench_args, cwd))
        print(f"round {i + 1}/{runs} done", file=sys.stderr)

    def errors(runs):
        return sorted({r["error"] for r in runs if r.get("error")})

    return {label: {
        "help_s": summary([r["wall_s"] for r in got["help"]]),
        "predict_s": summary([r["wall_s"] for r in got["predict"]]),
        "predict_peak_rss_mb": summary([r["rss_mb"] for r in got["predict"]]),
        "serve_ready_s": summary([r["ready_s"] for r in got["serve"]]),
        "serve_idle_rss_mb": summary([r.get("idle_rss_mb") for r in got["serve"]]),
        "serve_threads": summary([r.get("threads") for r in got["serve"]]),
        "bench_s": summary([r["wall_s"] for r in got["bench"]]),
        "bench_exit_status": sorted({r["exit_status"] for r in got["bench"]}),
        "failures": {name: errors(got[name]) for name in got if errors(got[name])},
    } for label, got in rows.items()}


# --- the installed environment ---------------------------------------------------------------------------------

def build_venv(source: Path, venv: Path) -> Path:
    """A fresh venv holding ``pip install SOURCE`` (no extras; built from a copy, so that no build/ lands in it)."""
    if venv.exists():
        shutil.rmtree(venv)
    copy = Path(tempfile.mkdtemp(prefix="tltf_src_"))
    try:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(source / name, copy / name)
        shutil.copytree(source / "tltf", copy / "tltf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        start = time.perf_counter()
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(copy)], check=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        print(f"built {venv} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return venv


def environment(venv: Path) -> dict:
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               env=env, capture_output=True, text=True, check=True).stdout.strip())
    disk = contents = 0
    for path in site.rglob("*"):
        if not path.is_symlink():
            st = path.lstat()
            disk += st.st_blocks * 512
            contents += st.st_size if path.is_file() else 0
    listed = json.loads(subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], env=env,
                                       capture_output=True, text=True, check=True).stdout)
    versions = {p["name"]: p["version"] for p in sorted(listed, key=lambda p: p["name"].lower())}
    tooling = {"pip", "setuptools", "wheel"}
    return {"venv": str(venv), "site_packages_mb": round(disk / 2**20, 1),
            "site_packages_contents_mb": round(contents / 2**20, 1), "distributions": len(versions),
            "distributions_without_pip_setuptools": len([n for n in versions if n.lower() not in tooling]),
            "versions": versions}


# --- main ------------------------------------------------------------------------------------------------------

def checks(result: dict) -> dict:
    """Issue 25's targets against a result (for the runtime-only install)."""
    value = {"install_mb": (result.get("environment") or {}).get("site_packages_mb"),
             "serve_ready_s": (result.get("serve_ready_s") or {}).get("median"),
             "serve_idle_rss_mb": (result.get("serve_idle_rss_mb") or {}).get("median"),
             "predict_s": (result.get("predict_s") or {}).get("median"),
             "help_s": (result.get("help_s") or {}).get("median")}
    return {name: {"target": TARGETS[name], "value": value[name],
                   "met": value[name] is not None and value[name] <= TARGETS[name]} for name in TARGETS}


def parse_target(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """``LABEL=[NAME=VALUE ...] COMMAND`` -> (label, command, environment)."""
    label, _, rest = spec.partition("=")
    words = shlex.split(rest)
    env = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if not label or not words:
        raise SystemExit(f"--target {spec!r}: expected LABEL=[NAME=VALUE ...] COMMAND")
    return label, words, env


def pairs(items: list[str], option: str) -> dict[str, Path]:
    out = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"{option} {item!r}: expected LABEL=PATH")
        out[label] = Path(path)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", default=[], metavar="LABEL=[NAME=VALUE ...] COMMAND",
                        help="A tltf to measure, under LABEL in the JSON: an executable or command line, after "
                        "environment settings (repeatable; e.g. 'old=PYTHONPATH=/tmp/tltf_old python -m tltf').")
    parser.add_argument("--venv", action="append", default=[], metavar="LABEL=PATH",
                        help="The environment LABEL's tltf is installed in (its size is reported; its bin/tltf is "
                        "run when there is no --target LABEL).")
    parser.add_argument("--build-venv", action="append", default=[], metavar="LABEL=SRC",
                        help="Build a fresh venv with `pip install SRC` (no extras) in --work for LABEL.")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tltf_runtime_startup")
    parser.add_argument("--model", type=Path, help="An .onnx model [default: a cnn_small export made in --work].")
    parser.add_argument("--image", type=Path, help="An image [default: an ImageNet photo, 512x512 JPEG].")
    parser.add_argument("--out", type=Path, default=HERE / "runtime_startup.json")
    args = parser.parse_args(argv)

    model, photo = make_inputs(args.work) if not (args.model and args.image) else (args.model, args.image)
    model, photo = (args.model or model).resolve(), (args.image or photo).resolve()
    venvs = pairs(args.venv, "--venv")
    for label, source in pairs(args.build_venv, "--build-venv").items():
        venvs[label] = build_venv(source.resolve(), args.work / f"venv-{label}")
    commands = {label: (command, env) for label, command, env in map(parse_target, args.target)}
    for label, venv in venvs.items():
        commands.setdefault(label, ([str(venv / "bin" / "tltf")], {}))
    if not commands:
        parser.error("give --target, --venv or --build-venv")
    targets = {label: Target(command, env) for label, (command, env) in commands.items()}

    load_before = os.getloadavg()[0]
    measured = measure(targets, model, photo, args.runs, args.work)
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # before, after: others' work on the machine
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    for label, result in measured.items():
        command, env = commands[label]
        result = {"command": shlex.join(command), "env": env, **result, "load_average_1min": load,
                  "measured_with": sorted(measured)}
        result["environment"] = environment(venvs[label]) if label in venvs else None
        result["checks"] = checks(result)
        data.setdefault("results", {})[label] = result
    data["setup"] = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}",
        "python": platform.python_version(), "runs": args.runs,
        "model": f"cnn_small export (64 px, 3 classes, {model.stat().st_size / 1e6:.1f} MB)",
        "image": f"ImageNet photo {photo.name} (512x512 JPEG, foolbox wheel)",
        "rss": "predict: peak RSS (/usr/bin/time -v); serve: VmRSS and Threads of /proc/PID/status 1 s after ready",
        "size": "site-packages on disk (du, MiB; includes .pyc files pip compiled, and pip/setuptools)",
        "targets": TARGETS,
    }
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    rows = [("help_s", "tltf --help (s)"), ("predict_s", "predict 1 image (s)"),
            ("predict_peak_rss_mb", "predict peak RSS (MB)"), ("serve_ready_s", "serve: spawn to ready (s)"),
            ("serve_idle_rss_mb", "serve idle RSS (MB)"), ("serve_threads", "serve threads"),
            ("bench_s", "bench --iterations 3 (s)")]
    labels = list(measured)
    print(f"{'median':28s}" + "".join(f"{label:>18s}" for label in labels))
    for key, name in rows:
        print(f"{name:28s}" + "".join(f"{_median(data['results'][label][key]):>18}" for label in labels))
    print(f"{'installed (MB, packages)':28s}" + "".join(
        f"{_size(data['results'][label]['environment']):>18}" for label in labels))
    for label in labels:
        if data["results"][label]["failures"]:
            print(f"failures of {label}:", json.dumps(data["results"][label]["failures"]))
    print(f"-> {args.out}")


def _median(value) -> str:
    return "-" if not value else f"{value['median']:.3g}"


def _size(environment) -> str:
    return "-" if not environment else f"{environment['site_packages_mb']:.0f}, {environment['distributions']}"


if __name__ == "__main__":
    main()
