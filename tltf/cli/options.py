"""Options shared by several commands (fit, features, compare, advise), defined once."""

import click

DATA_HELP = ("Image folder, .npz, a CSV manifest (labels.csv[:COLUMN]: a file column and label columns), "
             "tfds:NAME[:SPLIT] or builtin:NAME (shapes, mnist, uci_digits, lfw_faces).")


def data(required: bool = True):
    return click.option("--data", required=required, help=DATA_HELP)


WEIGHTS_HELP = "imagenet, none, a .keras/.h5 file or a named set (torchvision:mobilenet_v2; see tltf weights)."


def weights(default: str = "imagenet", help: str = WEIGHTS_HELP):
    """``--weights``: the backbone's starting weights (fit, compare, features, fewshot, drift, advise)."""
    return click.option("--weights", default=default, show_default=True, help=help)


backbone = click.option("--backbone", default="mobilenet_v2", show_default=True,
                        help="Registry name (see `tltf backbones`).")
image_size = click.option("--image-size", type=int, help="Input size in pixels [default: the backbone's].")
batch_size = click.option("--batch-size", type=int, default=32, show_default=True)
seed = click.option("--seed", type=int, default=0, show_default=True)
data_dir = click.option("--data-dir", help="tensorflow-datasets data folder.")
val_split = click.option("--val-split", type=float, default=0.2, show_default=True,
                         help="Fraction of train held out (stratified, seeded) when the data has no validation split.")
