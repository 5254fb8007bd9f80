"""Showing benchmark results: a rich table, the JSON file and a latency/throughput plot.

>>> table(results)                               # doctest: +SKIP
>>> write(results, "bench.json", "bench.png")    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from tltf.reporting import save_figure

RUNTIME_COLOURS = {"onnxruntime": "tab:blue", "keras": "tab:orange", "openvino": "tab:purple", "opencv": "tab:green"}


def table(bench: dict):
    """A ``rich.table.Table`` of the results, with the speed-up over Keras per batch size."""
    from rich.table import Table

    ratios = {(s.get("model"), s["batch_size"]): s["p50_ratio"] for s in bench.get("speedups", [])}
    several = _several(bench)
    runtimes = bool(bench.get("runtimes"))  # tltf bench --runtime: agreement with onnxruntime, no Keras
    t = Table(*(["model"] if several else []), "runtime", "provider", "batch", "p50 ms", "p90 ms", "p99 ms",
              "images/s", "top-1 vs onnxruntime" if runtimes else "vs keras", title=_title(bench), box=None)
    for r in bench["results"]:
        provider = r["provider"] + (" +xla" if r.get("xla") else "")
        ratio = ratios.get((r.get("model"), r["batch_size"])) if r["runtime"] == "onnxruntime" else None
        last = (f"{100 * r['top1_agreement']:.0f}% (max |diff| {r['max_abs_diff']:.1g})" if runtimes else
                f"{ratio:.2f}x" if ratio else "")
        t.add_row(*([r.get("model", "")] if several else []), r["runtime"], provider, str(r["batch_size"]),
                  f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['images_per_s']:.1f}",
                  last)
    return t


def _several(bench: dict) -> bool:
    """Whether several ONNX files were timed (then rows and plot lines are labelled by file)."""
    return len(bench.get("models", [])) > 1


def _title(bench: dict) -> str:
    return ", ".join(Path(str(m)).name for m in bench.get("models") or [bench.get("model", "")])


def _series(bench: dict) -> dict[str, list[dict]]:
    """Rows per plotted line: one per runtime, or per file when several ONNX files were timed."""
    lines: dict[str, list[dict]] = {}
    for r in bench["results"]:
        if bench.get("runtimes"):  # tltf bench --runtime: one line per runtime (and file)
            key = f"{r.get('model')} {r['runtime']}" if _several(bench) else r["runtime"]
        else:
            key = f"{r.get('model')} ({r['provider']})" if _several(bench) else f"{r['runtime']} ({r['provider']})"
        lines.setdefault(key, []).append(r)
    return lines


def plot(bench: dict, path: str | Path) -> Path:
    """p50 latency (p90 as error bar) and throughput against batch size, one line per runtime (or per file when
    several were timed); PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    several = _several(bench)
    for label, rows in _series(bench).items():
        rows = sorted(rows, key=lambda r: r["batch_size"])
        b = [r["batch_size"] for r in rows]
        p50 = [r["p50_ms"] for r in rows]
        p90 = [r["p90_ms"] - r["p50_ms"] for r in rows]
        colour = None if several else RUNTIME_COLOURS.get(rows[0]["runtime"])
        lat.errorbar(b, p50, yerr=[[0] * len(p90), p90], marker="o", capsize=3, label=label, color=colour)
        thr.plot(b, [r["images_per_s"] for r in rows], marker="o", label=label, color=colour)
    for ax, ylabel in ((lat, "latency p50 (ms, bar to p90)"), (thr, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    lat.set_yscale("log")
    runtimes = ", ".join(bench["runtimes"]) if bench.get("runtimes") else "onnxruntime"
    fig.suptitle(f"{_title(bench)}: {runtimes}" + (" vs Keras" if any(r["runtime"] == "keras"
                                                                       for r in bench["results"]) else ""))
    return save_figure(fig, path, dpi=120)


def write(bench: dict, json_path: str | Path | None = None, png_path: str | Path | None = None) -> None:
    """Write the JSON (atomically) and/or the plot."""
    from tltf.reporting import write_json

    if json_path:
        write_json(json_path, bench)
    if png_path:
        plot(bench, png_path)
