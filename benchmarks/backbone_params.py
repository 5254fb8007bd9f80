"""Measure every registry backbone: parameters without the top, number of blocks, block names.

    python benchmarks/backbone_params.py > benchmarks/backbone_params.txt

The parameter counts in ``tltf/backbones.py`` come from this script (building 40 networks takes minutes, so
``tltf backbones`` reads the recorded table instead of building them).
"""

import keras

from tltf import backbones

for name, spec in backbones.REGISTRY.items():
    size = max(spec.min_size, 96) if "nasnet" not in name else spec.default_size
    model = spec.build(size, weights="none")
    blocks = spec.blocks(model)
    print(f"{name}\t{model.count_params()}\t{len(blocks)}\t{' '.join(b for b, _ in blocks)}", flush=True)
    keras.backend.clear_session()
