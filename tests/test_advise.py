"""`tltf advise`: the size x similarity decision on constructed numbers, the proxy-A-distance on known distributions, the CLI."""

import json

import numpy as np
import pytest
from conftest import cli, write_image_folder

from tltf.advise import PAD_CLOSE, PAD_FAR, PROBE_HIGH, count, format_report, proxy_a_distance, recommend, size_band
from tltf.errors import TltfError


@pytest.mark.parametrize("n, probe, chance, pad, strategy, similarity", [
    (60, 0.95, 0.5, 1.2, "feature", "high"),      # < 100 images, features separate, moderate gap: extract features
    (60, 0.60, 0.5, 1.2, "feature", "low"),       # < 100, the features do not separate: earlier layers' too
    (60, 0.95, 0.5, 1.9, "feature", "low"),       # a good probe but a domain far from photos: not "close"
    (800, 0.95, 0.2, 1.2, "partial:8", "high"),   # hundreds-thousands, close: fine-tune upper layers
    (800, 0.40, 0.2, 1.9, "finetune", "low"),     # hundreds-thousands, far: fine-tune all layers
    (800, 0.40, 0.2, 0.3, "partial:8", "high"),   # the probe is weak but the images look like the source
    (50_000, 0.9, 0.1, 0.8, "finetune", "high"),  # > 10,000, close: fine-tune all
    (50_000, 0.3, 0.1, 1.99, "scratch", "low"),   # > 10,000, far: consider training from scratch
])
def test_recommendation_follows_the_seeds_table(n, probe, chance, pad, strategy, similarity):
    advice = recommend(n, probe, chance, pad, num_blocks=19)  # mobilenet_v2's 19 blocks: keep 0-8 frozen
    assert (advice["strategy"], advice["similarity"]) == (strategy, similarity)
    text = " ".join(advice["reasons"])
    assert f"{n} labelled training images" in text and f"accuracy {probe:.3f}" in text and f"{pad:.2f} of 2" in text
    assert ("compare" in text) == (strategy != "scratch")  # transfer advice always points at the baseline
    # small data: the measured reason the LP head is advised over fine-tuning, augmentation and dropout
    assert ("with or without augmentation and dropout" in text) == (n < 100)


def test_thresholds_and_bands():
    assert [size_band(n) for n in (99, 100, 10_000, 10_001)] == ["small", "medium", "medium", "large"]
    chance = 0.5
    at = chance + PROBE_HIGH * (1 - chance)  # gain exactly at the threshold counts as close
    assert recommend(500, at, chance, PAD_FAR - 0.01)["similarity"] == "high"
    assert recommend(500, at, chance, PAD_FAR)["similarity"] == "low"  # far domain: the probe alone is not enough
    assert recommend(500, at - 0.01, chance, PAD_FAR - 0.01)["similarity"] == "low"
    assert recommend(500, at - 0.01, chance, PAD_CLOSE - 0.01)["similarity"] == "high"
    assert recommend(500, None, chance, 0.5)["similarity"] == "high"  # a single measurement still decides
    assert recommend(500, at, chance, None)["similarity"] == "high"
    with pytest.raises(TltfError):
        recommend(500, None, chance, None)
    upper = recommend(500, 0.99, chance, 0.5, num_blocks=19)
    assert upper["fit_args"].startswith("--stage finetune --freeze-until 8")
    assert recommend(500, 0.99, chance, 0.5)["strategy"] == "gradual"  # block count unknown


def test_proxy_a_distance_is_near_zero_for_one_domain_and_near_two_for_separable_ones():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(120, 16)), rng.normal(size=(90, 16))
    same = proxy_a_distance(a.astype(np.float32), b.astype(np.float32), folds=2, epochs=20)
    assert same["reference_images"] == same["target_images"] == 90  # balanced by subsampling
    assert same["pad"] < 0.6
    shifted = proxy_a_distance(a.astype(np.float32), (b + 3.0).astype(np.float32), folds=2, epochs=20)
    assert shifted["pad"] > 1.9 and shifted["domain_error"] < 0.03


def test_count_reads_train_and_val_but_not_test():
    from tltf.data import Source, array_split

    x = np.zeros((10, 8, 8, 3), np.uint8)
    source = Source("t", ["a", "b", "c"], array_split(x, np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2]), "t"),
                    val=array_split(x[:3], np.array([0, 1, 2]), "v"), test=array_split(x[:4], np.zeros(4), "x"))
    assert count(source) == {"images": 13, "classes": 3, "per_class": {"a": 5, "b": 4, "c": 4},
                             "min_per_class": 4, "test_images": 4}


def test_advise_cli_end_to_end(image_folder, tmp_path):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (30, 40, 40, 3), dtype=np.uint8)  # a "source" unlike the shapes
    reference = write_image_folder(tmp_path / "reference", noise, np.zeros(30, int), ["photos"])
    result = cli("advise", "--data", image_folder, "--backbone", "cnn_small", "--weights", "none",
                 "--image-size", "32", "--reference", reference, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["counts"]["images"] == 36 and report["counts"]["min_per_class"] == 12
    probe, pad = report["linear_probe"], report["proxy_a_distance"]
    assert probe["images"] == 36 and probe["chance"] == pytest.approx(1 / 3) and 0 <= probe["accuracy"] <= 1
    assert pad["reference_images"] == pad["target_images"] == 30
    assert pad["pad"] > 1.0  # shapes on smooth backgrounds vs uniform noise: easy to tell apart
    advice = report["recommendation"]
    assert advice["size_band"] == "small"
    assert advice["strategy"] == "feature"  # small data: the linear classifier, close domain or far (measured)
    assert any(f"{probe['accuracy']:.3f}" in r for r in advice["reasons"])

    text = format_report(report)  # what the CLI prints without --json
    assert "recommendation:" in text and "because:" in text and f"{pad['pad']:.2f}" in text
    bad = cli("advise", "--data", tmp_path / "missing")
    assert bad.exit_code == 2 and "--data" in bad.stderr


def test_one_or_two_images_per_class_get_prototypes():
    assert recommend(20, 0.6, 0.1, 1.9, num_blocks=19, min_per_class=2)["strategy"] == "prototypes"
    assert recommend(20, 0.6, 0.1, 1.9, num_blocks=19, min_per_class=2)["fit_args"] == "--stage prototypes"
    assert recommend(30, 0.6, 0.1, 1.9, num_blocks=19, min_per_class=3)["strategy"] == "feature"
    assert recommend(800, 0.4, 0.2, 1.9, num_blocks=19, min_per_class=1)["strategy"] == "finetune"  # not small
