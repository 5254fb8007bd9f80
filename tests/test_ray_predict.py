"""`tltf predict --engine ray`: Ray Data batch scoring on a local 2-CPU cluster gives the top-1 class that
`tltf predict` gives, for every image of a folder of 600; the Parquet output is whole or absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import cli
from tiny_onnx import write_tiny_classifier

pytest.importorskip("ray", reason="Ray is in the dev extra; without it --engine ray is tested for its error only")

IMAGES = 600


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """600 small images (PNG and JPEG, two sizes: resized as in training) of random colours with noise, and the
    tiny classifier (32 px, cat/dog/fish)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("ray")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        shape = (40, 48, 3) if i % 2 else (32, 32, 3)
        pixels = np.clip(rng.uniform(30, 225, (1, 1, 3)) + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{i:04d}.{'png' if i % 3 else 'jpg'}")
    write_tiny_classifier(root / "tiny.onnx")
    return root


def test_ray_scoring_equals_tltf_predict_for_every_image(folder):
    import json

    import numpy as np
    import pyarrow.parquet as pq

    out = folder / "preds.parquet"
    result = cli("predict", folder / "tiny.onnx", "--data", folder / "images", "--engine", "ray", "--out", out,
                 "--top", "2", "--ray-cpus", "2")
    assert result.exit_code == 0, result.output
    assert f"{IMAGES} images" in result.output
    rows = pq.read_table(out).to_pylist()
    local = json.loads(cli("predict", folder / "tiny.onnx", folder / "images", "--top", "2", "--json").output)
    assert len(rows) == len(local) == IMAGES
    by_file = {r["file"]: r for r in rows}
    assert sorted(by_file) == sorted(str(Path(r["file"]).resolve()) for r in local)  # every image once
    for r in local:
        ray_row = by_file[str(Path(r["file"]).resolve())]
        assert ray_row["top_index"][0] == r["top"][0]["index"] and ray_row["top_label"][0] == r["top"][0]["label"]
        np.testing.assert_allclose(ray_row["top_score"], [t["score"] for t in r["top"]], atol=1e-5)
    assert len({r["top_index"][0] for r in rows}) > 1  # the images get different answers: a real comparison


def test_a_bad_image_fails_before_ray_and_leaves_no_file(folder, tmp_path):
    bad = tmp_path / "images"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "preds.parquet"
    result = cli("predict", folder / "tiny.onnx", "--data", bad, "--engine", "ray", "--out", out)
    assert result.exit_code == 2 and "broken.png" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    result = cli("predict", folder / "tiny.onnx", "--data", bad, "--engine", "ray")
    assert result.exit_code == 2 and "--out" in result.stderr
    import socket

    with socket.socket() as closed:  # a port nothing listens on (bound, never listening)
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        result = cli("predict", folder / "tiny.onnx", folder / "images" / "0001.png", "--engine", "ray", "--out",
                     out, "--ray-address", address)
    assert result.exit_code == 2 and f"--ray-address {address}: no Ray cluster answers there" in result.stderr
    assert not out.exists()


@pytest.mark.slow  # a second Ray start-up: ~40 s on the loaded 2-core machine
def test_a_file_that_fails_to_decode_in_a_worker_aborts_without_a_half_file(folder, tmp_path):
    """A truncated PNG passes the header check and fails in a Ray worker: one line naming it, and neither the
    output nor a temporary file is left (the rows scored before it are not written)."""
    import shutil

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((folder / "images").glob("*.png"))[:40]:
        shutil.copy(path, images)
    whole = (folder / "images" / "0001.png").read_bytes()
    (images / "zz_truncated.png").write_bytes(whole[:len(whole) // 2])
    out = tmp_path / "out" / "preds.parquet"
    result = cli("predict", folder / "tiny.onnx", "--data", images, "--engine", "ray", "--out", out)
    assert result.exit_code == 2 and "zz_truncated.png: not a readable image" in result.stderr
    assert not out.exists() and list(out.parent.iterdir()) == []


@pytest.mark.slow  # a Ray cluster of its own: ~60 s on the loaded 2-core machine
def test_ray_address_joins_a_running_cluster_and_leaves_it_running(folder, tmp_path, monkeypatch):
    """--ray-address: the model reaches the workers through the object store (not its path), the results are
    tltf predict's, and the cluster -- started here by another process, as an operator's would be -- stays up."""
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    # Ray 2.60's token authentication: a cluster of this test, joined by this test; a user's joins with the token
    # the cluster was given (RAY_AUTH_TOKEN)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import ray, sys\n"
                               "ray.init(num_cpus=2, include_dashboard=False)\n"
                               "print(ray.get_runtime_context().gcs_address, flush=True)\n"
                               "sys.stdin.read()\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = holder.stdout.readline().strip()
        assert address, "the cluster did not start"
        images = sorted((folder / "images").iterdir())[:60]
        out = tmp_path / "preds.parquet"
        # in a process of its own, as a user's would be: this test process ran local clusters in the tests before,
        # and joining from it after them lost an actor at start-up (every time when the four tests ran in order)
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        result = subprocess.run([sys.executable, "-m", "tltf", "predict", str(folder / "tiny.onnx"), *map(str, images),
                                 "--engine", "ray", "--out", str(out), "--top", "1", "--ray-address", address],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        rows = {r["file"]: r["top_index"][0] for r in pq.read_table(out).to_pylist()}
        local = json.loads(cli("predict", folder / "tiny.onnx", *images, "--top", "1", "--json").output)
        assert rows == {str(Path(r["file"]).resolve()): r["top"][0]["index"] for r in local}
        assert holder.poll() is None  # the cluster it joined is still there
    finally:
        holder.stdin.close()  # the holder's ray.shutdown at exit stops the cluster it started
        holder.wait(timeout=120)
