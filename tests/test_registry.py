"""The backbone registry: names, blocks, preprocessing, errors."""

import re
from pathlib import Path

import keras
import pytest

from tltf import backbones
from tltf.errors import TltfError
from tltf.models.transfer import build_backbone

# Every keras.applications constructor has a registry entry.
APPLICATIONS = [n for n in dir(keras.applications) if n[0].isupper() and callable(getattr(keras.applications, n))]


def test_every_keras_application_is_registered():
    constructors = {spec.constructor for spec in backbones.REGISTRY.values()}
    missing = [n for n in APPLICATIONS if getattr(keras.applications, n) not in constructors]
    assert not missing
    applications = [spec.constructor for spec in backbones.REGISTRY.values()
                    if spec.constructor in {getattr(keras.applications, n) for n in APPLICATIONS}]
    assert len(applications) == len(set(applications)) == len(APPLICATIONS) == 40  # one entry each (Keras 3.x)
    others = sorted(name for name, spec in backbones.REGISTRY.items() if spec.constructor not in applications)
    assert others == ["cnn_small", "cnn_small_bn"]  # the DANN digit CNN, without and with BatchNorm
    assert len(backbones.REGISTRY) == 42


@pytest.mark.parametrize("name, size, first, last", [
    ("mobilenet_v2", 32, "stem", "top"),
    ("mobilenet_v3_small", 32, "stem", "top"),
    ("resnet50", 32, "stem", "conv5"),
    ("efficientnet_b0", 32, "stem", "top"),
    ("densenet121", 32, "stem", "dense5"),
    ("vgg16", 32, "block1", "block5"),
])
def test_blocks_cover_every_layer_in_order(name, size, first, last):
    spec = backbones.get(name)
    net = spec.build(size, weights="none")
    blocks = spec.blocks(net)
    assert blocks[0][0] == first and blocks[-1][0] == last
    assert len(blocks) == spec.num_blocks
    covered = [layer for _, layers in blocks for layer in layers]
    assert covered == [layer for layer in net.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert net.count_params() == spec.params


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(TltfError, match="did you mean mobilenet_v2"):
        backbones.get("mobilnet_v2")


def test_too_small_image_size_is_refused():
    with pytest.raises(TltfError, match="--image-size 40x40 is too small for inception_v3"):
        backbones.get("inception_v3").build(40, weights="none")


def test_weights_file_for_another_architecture_is_refused(tmp_path):
    other = backbones.get("mobilenet_v3_small").build(32, weights="none")
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(TltfError, match="--weights .*other.weights.h5: does not match mobilenet_v2"):
        build_backbone(backbones.get("mobilenet_v2"), 32, weights=str(path))
    with pytest.raises(ValueError, match="build_backbone"):  # the registry builds Keras' weights only
        backbones.get("mobilenet_v2").build(32, weights=str(path))


def test_the_docs_say_how_many_backbones_the_registry_holds():
    page = (Path(__file__).resolve().parents[1] / "docs" / "getting-started.md").read_text()
    said = re.search(r"lists the (\d+) registry backbones", page)
    assert said and int(said.group(1)) == len(backbones.REGISTRY)
