"""``tltf instances``' outputs: ``scores.csv`` (every training example, most harmful first) and ``harmful.png`` (a
contact sheet of the worst images with their given and predicted labels). Both are written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tltf.atomic import replacing
from tltf.contact_sheet import contact_sheet, images_at
from tltf.instances.scoring import InstanceScores

COLUMNS = ("file", "label", "predicted", "score")


def write_scores_csv(path: str | Path, scores: InstanceScores) -> Path:
    """``file,label,predicted,score`` per example, most harmful first (labels as class names)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in scores.rows():
        writer.writerow({**row, "score": f"{row['score']:.6g}"})
    with replacing(path, ".csv") as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return Path(path)


def _short(name: str, width: int = 20) -> str:
    name = Path(name).name if ("/" in name or "\\" in name) else name
    return name if len(name) <= width else "..." + name[-(width - 3):]


def write_contact_sheet(path: str | Path, scores: InstanceScores, split, top: int = 64) -> Path:
    """``harmful.png``: the ``top`` most harmful images of ``split`` (the split that was scored), each captioned
    ``rank. given -> predicted``, its file (or index) and score."""
    worst = scores.harmful(top)
    images = images_at(split, worst)
    names = scores.class_names
    captions = [f"{rank}. {names[scores.labels[i]]} -> {names[scores.predicted[i]]}\n{_short(scores.names[i])}\n"
                f"{scores.scores[i]:.3g}" for rank, i in enumerate(worst, 1)]
    title = (f"The {len(worst)} most harmful of {len(scores)} training images: given -> predicted label, "
             "file, score\n(score: predicted drop of the validation loss without the image; > 0: removing it helps)")
    return contact_sheet(path, images, captions[:len(images)], title)
