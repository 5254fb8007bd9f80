"""The benchmark figures of the docs, drawn from the JSON the benchmark scripts wrote (``benchmarks/*.json``).

Used two ways:

- as an MkDocs hook (``hooks: [docs/plots.py]`` in ``mkdocs.yml``): at every build, each figure of :data:`FIGURES` is
  drawn from its JSON and added to the site as ``benchmarks/plots/NAME.svg``, so a figure cannot disagree with the
  numbers it shows (no image is committed);
- by hand, ``python docs/plots.py OUT_DIR`` writes the same SVG files into ``OUT_DIR``.

A figure function takes the parsed JSON and a matplotlib ``Axes``; ``docs/benchmarks/index.md`` shows each figure
with the script and the JSON it came from.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


def _bars(ax, groups, series, values, ylabel, fmt="{:.2f}"):
    """Grouped bars: ``values[s][g]`` for each series ``s`` over groups ``g``."""
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values[i], width, label=name)
        ax.bar_label(bars, [fmt.format(v) for v in values[i]], fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=len(series), loc="upper center")


def small_data(data, ax):
    """10 images per class: tltf's default against --stage feature, finetune and scikit-learn's logistic regression."""
    arms = {"default": "tltf default", "feature": "--stage feature", "finetune": "--stage finetune",
            "sklearn": "sklearn LR on features"}
    tasks = ["mnist_10", "uci_10", "shapes_10", "lfw"]
    mean = {(s["task"], s["arm"]): s["mean"] for s in data["summary"]}
    tasks = [t for t in tasks if any((t, a) in mean for a in arms)]
    arms = {a: label for a, label in arms.items() if any((t, a) in mean for t in tasks)}
    values = [[mean.get((t, a), 0.0) for t in tasks] for a in arms]
    _bars(ax, tasks, list(arms.values()), values, "test accuracy (mean of seeds)")
    ax.set_ylim(0, 1.25)


def onnx_vs_keras(data, ax):
    """Batch-1 latency per backbone: onnxruntime fp32 and int8 against Keras (with and without XLA)."""
    rows = data["rows"]
    series = [("ort_fp32_ms", "onnxruntime fp32"), ("ort_int8_ms", "onnxruntime int8"), ("keras_ms", "Keras"),
              ("keras_xla_ms", "Keras + XLA")]
    series = [(k, label) for k, label in series if all(k in r for r in rows)]
    _bars(ax, [r["backbone"] for r in rows], [label for _, label in series],
          [[r[k] for r in rows] for k, _ in series], f"ms per image (batch {data.get('batch_size', 1)})", "{:.1f}")
    ax.set_yscale("log")


def serve_load(data, ax):
    """tltf serve: requests/s against the number of concurrent clients, per mode."""
    modes: dict[str, list[tuple[int, float]]] = {}
    for row in data["rows"]:
        modes.setdefault(row["mode"], []).append((row["concurrency"], row["throughput_per_s"]))
    for mode, points in modes.items():
        points.sort()
        ax.plot([c for c, _ in points], [t for _, t in points], marker="o", label=mode)
    ax.set_xscale("log", base=2)
    clients = sorted({row["concurrency"] for row in data["rows"]})
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests/s (median of rounds)")
    ax.legend(fontsize=7)


def fewshot(data, ax):
    """N-way K-shot episodes: prototypes (tltf) against the plain nearest class mean."""
    rows = [r for r in data["results"] if r["features"] == "multilevel"] or data["results"]
    groups = [f"{r['data'].split(':')[-1]}\n{r['ways']}-way {r['shots']}-shot" for r in rows]
    _bars(ax, groups, ["tltf prototypes", "nearest class mean"],
          [[r["mean"] for r in rows], [r["baseline_mean"] for r in rows]], "episode accuracy (mean)")
    ax.set_ylim(0, 1.2)


def runtime_startup(data, ax):
    """The inference runtime alone (pip install .) against the previous full install: seconds per command."""
    results = data["results"]
    keys = [("help_s", "tltf --help"), ("predict_s", "predict"), ("serve_ready_s", "serve until ready"),
            ("bench_s", "bench")]
    runs = [("old", "before (full install)"), ("new", "runtime alone")]
    runs = [(k, label) for k, label in runs if k in results]
    _bars(ax, [label for _, label in keys], [label for _, label in runs],
          [[results[r][k]["median"] for k, _ in keys] for r, _ in runs], "seconds (median)")


def multitask(data, ax):
    """One backbone with a head per task against one model per task: accuracy of each task."""
    groups, multi, alone = [], [], []
    for s in data["summary"]:
        for task in ("digit", "parity"):
            if f"multitask_{task}" in s and f"{task}_alone" in s:
                groups.append(f"{s['data']}: {task}")
                multi.append(s[f"multitask_{task}"][0])
                alone.append(s[f"{task}_alone"][0])
    _bars(ax, groups, ["one model, a head per task", "one model per task"], [multi, alone], "test accuracy")
    ax.set_ylim(0, 1.25)


#: figure name -> (benchmark JSON, benchmark script, function, title)
FIGURES = {
    "small_data": ("small_data.json", "small_data.py", small_data, "10 images per class"),
    "onnx_vs_keras": ("onnx_vs_keras.json", "onnx_vs_keras.py", onnx_vs_keras, "ONNX Runtime vs Keras, batch 1"),
    "serve_load": ("serve_load.json", "serve_load.py", serve_load, "tltf serve under load"),
    "fewshot": ("fewshot.json", "fewshot.py", fewshot, "Few-shot episodes"),
    "runtime_startup": ("runtime_startup.json", "runtime_startup.py", runtime_startup, "The runtime alone"),
    "multitask": ("multitask.json", "multitask.py", multitask, "Multitask vs one model per task"),
}


def render(name: str) -> bytes:
    """The SVG of figure ``name``, drawn from its JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_name, _, draw, title = FIGURES[name]
    data = json.loads((BENCHMARKS / json_name).read_text())
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    try:
        draw(data, ax)
        ax.set_title(f"{title}  (benchmarks/{json_name})", fontsize=10)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="svg", metadata={"Date": None})  # no date: the same JSON gives the same file
        return out.getvalue()
    finally:
        plt.close(fig)


def write_all(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FIGURES:
        path = folder / f"{name}.svg"
        path.write_bytes(render(name))
        written.append(path)
    return written


def on_files(files, config, **kwargs):
    """MkDocs hook: add every figure to the site as ``benchmarks/plots/NAME.svg`` (generated, so links to it check)."""
    from mkdocs.structure.files import File

    for name in FIGURES:
        files.append(File.generated(config, f"benchmarks/plots/{name}.svg", content=render(name)))
    return files


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "site/benchmarks/plots")):
        print(path)
