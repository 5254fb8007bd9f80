"""``tltf predict --engine ray`` (Ray Data, an actor pool of onnxruntime sessions) vs single-process ``tltf
predict``: images/s, Ray's start-up cost, and the folder size where Ray starts to pay off on this machine.

Both are timed as users run them, as whole commands (``python -m tltf predict ...``: interpreter, model load and,
for Ray, the local cluster's start and stop included), on folders of N synthetic 256x256 JPEGs (smooth colour
fields with noise; decoded and resized to the model's input by :mod:`tltf.runtime.images` in both engines). The
model is a synthetic ONNX classifier of MobileNetV3-Small's compute (4 stride-2 convolutions, 128 px input, ~60 M
multiply-adds per image, 10 classes; built with onnx.helper, so no export is needed); ``--tiny`` uses
tests/tiny_onnx.py's 32 px model instead (decoding then dominates). The engines take turns per N so that other
work on the machine weighs on both alike; the 1-minute load average is recorded before each run.

Break-even: each engine's wall time is fitted as ``t(N) = a + N / r`` over the sizes run (a: fixed cost --
start-up, model load; r: images/s once running); Ray pays off above ``N* = (a_ray - a_local) / (1/r_local -
1/r_ray)`` when ``r_ray > r_local``, else never on this machine (then the figure to read is how many CPUs Ray
needs: its per-actor rate times actors).

    python benchmarks/ray_predict.py --sizes 300,1500 --out benchmarks/ray_predict.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_model(path: Path, side: int = 128, classes: int = 10) -> Path:
    """A MobileNetV3-Small-sized ONNX classifier with tltf's contract (NHWC pixels 0..255, probabilities)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    widths, nodes, weights, x = [3, 32, 64, 128, 256], [], {}, "nchw"
    nodes += [helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
              helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2])]
    weights["scale"] = np.array(1 / 255, np.float32)
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
        weights[f"w{i}"] = rng.normal(0, (2 / (9 * cin)) ** 0.5, (cout, cin, 3, 3)).astype(np.float32)
        weights[f"b{i}"] = np.zeros(cout, np.float32)
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], strides=[2, 2], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    weights["fc_w"] = rng.normal(0, 0.1, (widths[-1], classes)).astype(np.float32)
    weights["fc_b"] = np.zeros(classes, np.float32)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["f"]),
              helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                             ["batch", side, side, 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"class_names": json.dumps([f"c{i}" for i in range(classes)]),
                                   "image_size": json.dumps([side, side])})
    onnx.save(model, str(path))
    return path


def write_images(folder: Path, n: int, side: int = 256) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    for i in range(n):
        a, b = rng.uniform(20, 235, (2, 3))
        field = a + (b - a) * ramp[:, None, None] * ramp[None, :, None]
        pixels = np.clip(field + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def load() -> float:
    return os.getloadavg()[0]


def run(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tltf", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=1800)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"tltf {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """``(a, r)`` of ``t = a + n / r`` by least squares."""
    n, t = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    slope, a = np.polyfit(n, t, 1)
    return float(a), float(1 / slope) if slope > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="300,1500", help="folder sizes (images), comma-separated")
    parser.add_argument("--ray-cpus", default="2", help="local Ray cluster CPUs, comma-separated (one run each)")
    parser.add_argument("--tiny", action="store_true", help="the 32 px test model instead of the 128 px one")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "ray_predict.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cpus = [int(c) for c in args.ray_cpus.split(",")]
    runs, points = [], {"local": []}
    with tempfile.TemporaryDirectory(prefix="tltf-raybench-") as work:
        work = Path(work)
        if args.tiny:
            sys.path.insert(0, str(REPO / "tests"))
            from tiny_onnx import write_tiny_classifier

            model = write_tiny_classifier(work / "model.onnx")
        else:
            model = write_model(work / "model.onnx")
        for n in sizes:
            folder = write_images(work / f"images_{n}", n)
            row = {"images": n}
            before = load()
            seconds, out = run(["predict", str(model), "--data", str(folder), "--top", "3", "--json"])
            assert len(json.loads(out)) == n
            runs.append({"engine": "local", "images": n, "seconds": round(seconds, 2),
                         "images_per_s": round(n / seconds, 1), "load_before": round(before, 2)})
            points["local"].append((n, seconds))
            print(runs[-1], flush=True)
            for c in cpus:
                before = load()
                seconds, out = run(["predict", str(model), "--data", str(folder), "--engine", "ray", "--out",
                                    str(work / "preds.parquet"), "--top", "3", "--ray-cpus", str(c)])
                found = re.search(r"in ([\d.]+) s .*Ray start-up ([\d.]+) s, (\d+) onnxruntime actor", out)
                runs.append({"engine": "ray", "ray_cpus": c, "actors": int(found.group(3)), "images": n,
                             "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
                             "ray_startup_s": float(found.group(2)), "scoring_s": float(found.group(1)),
                             "load_before": round(before, 2)})
                points.setdefault(f"ray{c}", []).append((n, seconds))
                print(runs[-1], flush=True)
            row.clear()
    fits = {engine: dict(zip(("fixed_s", "images_per_s"), fit(p))) for engine, p in points.items() if len(p) > 1}
    local = fits.get("local")
    for engine, f in fits.items():
        if engine == "local" or not local:
            continue
        if f["images_per_s"] > local["images_per_s"]:
            f["pays_off_above_images"] = round((f["fixed_s"] - local["fixed_s"])
                                               / (1 / local["images_per_s"] - 1 / f["images_per_s"]))
        else:
            f["pays_off_above_images"] = None
    result = {"benchmark": "tltf predict --engine ray vs single-process tltf predict",
              "model": "tiny 32 px" if args.tiny else "synthetic 128 px, ~60 M MACs/image (MobileNetV3-Small-sized)",
              "images": "256x256 JPEG", "runs": runs, "fits_t_equals_a_plus_n_over_r": fits,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(),
                          "note": "2 cores shared by 6 concurrent helper sessions: load_before is the 1-min load"},
              "command": "python benchmarks/ray_predict.py " + " ".join(sys.argv[1:])}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(fits, indent=2))


if __name__ == "__main__":
    main()
