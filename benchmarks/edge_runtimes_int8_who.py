"""Who is right on a trained int8 file? torchvision's MobileNetV2 exported int8 (calibrated on the 20 ImageNet photos,
gate lowered to 0.5, slim off) run on onnxruntime, OpenVINO and OpenCV: top-1 against the photos' labels and against
Keras fp32. Prints JSON; the figures are in benchmarks/edge_runtimes.json (mobilenet_v2_int8_on_20_photos).

    python benchmarks/edge_runtimes_int8_who.py
"""
import tempfile
import shutil, numpy as np, json
from pathlib import Path
from tltf.data.offline import imagenet_photos
from tltf.data.images import load_images
from tltf.weights.pretrained import resolve
from tltf.export.onnx import export_onnx
from tltf.export import portability, parity
from tltf.models.loading import load_model
folder = Path(tempfile.mkdtemp()) / "photos"; folder.mkdir(parents=True, exist_ok=True)
photos = imagenet_photos()
for p, _ in photos: shutil.copy(p, folder / p.name)
labels = np.array([l for _, l in photos])
pixels = load_images([str(folder / p.name) for p, _ in photos], (224, 224))
w = resolve("torchvision:mobilenet_v2")
keras_probs = parity.keras_probabilities(load_model(w), pixels)
out = folder.parent / "mnv2_int8.onnx"
export_onnx(w, out, precision="int8", calibration_data=folder, threshold=0.5, slim="off", runtimes=())
res = {"keras": float((keras_probs.argmax(1) == labels).mean())}
for r in ("onnxruntime", "openvino", "opencv"):
    p = portability.load(r, out)(pixels)
    res[r] = {"top1_vs_labels": float((p.argmax(1) == labels).mean()), "top1_vs_keras": float((p.argmax(1) == keras_probs.argmax(1)).mean())}
print(json.dumps(res))
