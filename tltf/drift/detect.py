"""``detect_drift``: does new data still look like the reference data, and how did its classes move?

The steps, each in its own module:

1. read both image sets (:mod:`tltf.drift.images`) and draw at most ``max_samples`` of each (seeded);
2. features from a trained classifier's penultimate layer or a pretrained backbone (:mod:`tltf.drift.features`,
   through the feature cache);
3. the kernel two-sample test, which gives the verdict (:mod:`tltf.drift.mmd`);
4. the classifier two-sample test, which ranks the new images by how unlike the reference they look
   (:mod:`tltf.drift.classifier_test`), drawn as a contact sheet (:mod:`tltf.contact_sheet`);
5. with a trained classifier and a labelled reference, the new class prior by BBSE (:mod:`tltf.drift.label_shift`).

The trained classifier may be a ``.keras`` model or its ``.onnx`` export with a features output (``tltf export
--onnx --features``). The ``.onnx`` path is TensorFlow-free -- folders scanned by :mod:`tltf.data.folders`, images
decoded by Pillow (:mod:`tltf.runtime.images`), features and probabilities from onnxruntime -- and gives the same
verdicts: the same images are drawn; their pixels are the training pipeline's (identical PNG and JPEG pixels at the
model's size; after a 40 -> 32 px resize 0.16 % of the values round one level apart); the features match Keras' to
7e-7 of their range. Measured on cnn_small (``tests/test_drift_onnx.py``, 90 + 90 images, 500 permutations): the
same p-values, 0.7146 (no drift) and 0.0020 (darker images: drift), and domain-classifier AUCs within 2e-4. A
random network's near-tied predictions can still flip on those pixels: its BBSE estimate moved by 0.016 there.

>>> report = detect_drift("builtin:mnist", "builtin:uci_digits", backbone="mobilenet_v2",
...                       weights="torchvision:mobilenet_v2", image_size=96, max_samples=300)   # doctest: +SKIP
>>> report.drift, report.mmd.p_value                                                          # doctest: +SKIP
(True, 0.000999...)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from tltf.drift.classifier_test import classifier_test
from tltf.drift.label_shift import bbse
from tltf.drift.mmd import mmd_test
from tltf.drift.report import DriftReport
from tltf.errors import TltfError

TOP = 16  # images on the contact sheet


def check_settings(alpha: float, max_samples: int | None, permutations: int) -> None:
    """One-line errors naming the option for settings outside their range."""
    if not 0 < alpha < 1:
        raise TltfError(f"--alpha {alpha}: must be between 0 and 1")
    if max_samples is not None and max_samples < 2:
        raise TltfError(f"--max-samples {max_samples}: must be at least 2")
    if permutations < 1:
        raise TltfError(f"--permutations {permutations}: must be at least 1")


#: modules a drift check needs beyond the inference runtime: the domain classifier's, and the contact sheet's
NEEDED = {"sklearn": "scikit-learn", "scipy": "scipy"}
NEEDED_FOR_OUT = {"matplotlib": "matplotlib"}


def check_installed(writes_sheet: bool) -> None:
    """A one-line error, before any image is read, where scikit-learn or scipy (the domain classifier) or, for
    ``--out``, matplotlib (the contact sheet) is missing: an inference-runtime install (``pip install tltf``) has
    none of them, the training stack all three."""
    import importlib.util

    def installed(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    wanted = NEEDED | (NEEDED_FOR_OUT if writes_sheet else {})
    missing = [package for module, package in wanted.items() if not installed(module)]
    if missing:
        raise TltfError(f"tltf drift needs {' and '.join(missing)} (not installed here): pip install "
                        "'tltf[drift]'")


def on_runtime(model: str | None) -> bool:
    """Whether a drift check runs on the inference runtime alone (no TensorFlow): with an ``.onnx`` ``--model``."""
    return model is not None and Path(str(model)).suffix.lower() == ".onnx"


def detect_drift(reference: str, data: str, model: str | None = None, backbone: str = "mobilenet_v2",
                 weights: str = "imagenet", image_size: int | None = None, max_samples: int | None = 1000,
                 seed: int = 0, alpha: float = 0.05, permutations: int = 1000, batch_size: int = 32,
                 data_dir: str | None = None, cache: bool = True, out: str | Path | None = None,
                 log: Callable[[str], None] | None = None) -> DriftReport:
    """Compare the images of ``data`` with those of ``reference`` (``--data``-style specs; ``data`` may be a folder
    of unlabelled images); see the module docstring. ``out``: a folder for ``drift.json`` and
    ``most_different.png``. With an ``.onnx`` ``model`` (exported with ``--features``) nothing on the way imports
    TensorFlow unless a spec other than an image folder needs the training pipeline."""
    from tltf.drift import features as feature_sources
    from tltf.drift.images import load_images, subsample

    check_settings(alpha, max_samples, permutations)
    check_installed(out is not None)
    runtime = on_runtime(model)
    if not runtime:  # TensorFlow loads quietly, or a one-line error says how to install it
        from tltf.extras import training_stack

        training_stack(f"--model {model}" if model else "tltf drift without --model FILE.onnx")
    if out is not None:
        from tltf.atomic import make_folder

        out = make_folder(out, "--out")
    start = time.perf_counter()
    say = log or (lambda message: None)
    # an .onnx file is opened first: one without a features output fails before any image is read
    source = feature_sources.from_onnx(model, image_size, cache) if runtime else None
    ref_all = load_images(reference, "--reference", data_dir, labelled=model is not None, runtime=runtime)
    new_all = load_images(data, "--data", data_dir, labelled=False, runtime=runtime)
    ref, _ = subsample(ref_all, max_samples, np.random.default_rng([seed, 1]))
    new, new_index = subsample(new_all, max_samples, np.random.default_rng([seed, 2]))
    if len(ref.split) < 2 or len(new.split) < 2:
        which = "--reference" if len(ref.split) < 2 else "--data"
        raise TltfError(f"{which}: needs at least 2 images")

    if source is None:
        source = (feature_sources.from_model(model, image_size, cache) if model
                  else feature_sources.from_backbone(backbone, weights, image_size, cache, seed))
    mapping = _class_mapping(source.class_names, ref) if model else None  # before the slow part: fail fast
    x_ref, y_ref = source.features(ref, batch_size, cache)
    x_new, _ = source.features(new, batch_size, cache)
    say(f"features: {len(x_ref)} reference and {len(x_new)} new images -> {x_ref.shape[1]} dims")

    mmd = mmd_test(x_ref, x_new, permutations, seed)
    domain = classifier_test(x_ref, x_new, seed=seed)
    order = np.argsort(-domain.scores, kind="stable")[:TOP]
    most = [{"index": int(new_index[i]), "score": round(float(domain.scores[i]), 4),
             **({"file": new.files[i]} if new.files is not None else {})} for i in order]
    notes: list[str] = []
    shift = None
    if mapping is not None:
        shift = bbse(mapping[np.asarray(y_ref, int)], source.probabilities(x_ref), source.probabilities(x_new),
                     source.class_names)
    elif model:
        notes.append(f"label shift: skipped, {ref.spec} has no class labels (it needs a labelled reference)")
    report = DriftReport(str(reference), str(data), alpha, mmd, domain, source.description, most, shift, notes)
    if out is not None:
        _write(report, new, order, Path(out))
    report.seconds = time.perf_counter() - start
    if out is not None:
        from tltf.reporting import write_json

        write_json(Path(out) / "drift.json", report.as_dict())
    return report


def _class_mapping(model_classes: list[str], ref) -> np.ndarray | None:
    """Each reference class's index among the model's classes; ``None`` for an unlabelled reference."""
    if not ref.labelled:
        return None
    missing = [c for c in ref.class_names if c not in model_classes]
    if missing:
        raise TltfError(f"--reference {ref.spec}: class {missing[0]!r} is not one of the model's classes "
                        f"({', '.join(model_classes[:10])}{'…' if len(model_classes) > 10 else ''})")
    return np.array([model_classes.index(c) for c in ref.class_names])


def _write(report: DriftReport, new, order: np.ndarray, out: Path) -> None:
    """``most_different.png``: the new images the domain classifier finds least like the reference."""
    from tltf.contact_sheet import contact_sheet, images_at

    captions = [f"p(new) {d['score']:.3f}" + (f"\n{Path(d['file']).name[:24]}" if "file" in d else "")
                for d in report.most_different]
    title = f"least like {Path(report.reference).name}: domain-classifier probability of 'new'"
    report.outputs["most_different"] = str(contact_sheet(out / "most_different.png", images_at(new.split, order),
                                                         captions, title=title, columns=4))
    report.outputs["report"] = str(out / "drift.json")
