"""Rule prepare_data: train/test images (uint8 NHWC) and labels (int64) as .npy, plus a data card."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from hessflow import artifacts, data  # noqa: E402

params = snakemake.params
source = {"dataset": params.dataset}
if params.dataset == "cifar10":
    from hessflow.download import extract_cifar10

    archive = Path(snakemake.input.archive)
    with tempfile.TemporaryDirectory(dir=Path(snakemake.output.card).parent) as scratch:
        folder = extract_cifar10(archive, scratch)
        train = data.load_cifar10(folder, "train")
        test = data.load_cifar10(folder, "test")
    source.update(archive=str(archive), archive_sha256=artifacts.sha256_file(archive))
else:
    if params.dataset == "digits":
        images, labels = data.load_digits()
        source["origin"] = "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)"
    else:
        synthetic = params.synthetic
        images, labels = data.synthetic_dataset(
            synthetic["num_examples"], tuple(synthetic["image_shape"]), synthetic["num_classes"], seed=params.seed
        )
        source.update(origin="hessflow.data.synthetic_dataset", **synthetic)
    train, test = data.train_test_split(images, labels, params.test_fraction, seed=params.seed)
    source.update(test_fraction=params.test_fraction, split_seed=params.seed)

out = snakemake.output
for (images, labels), prefix in [(train, "train"), (test, "test")]:
    artifacts.save_npy(out[f"{prefix}_images"], images)
    artifacts.save_npy(out[f"{prefix}_labels"], labels)
    print(f"{prefix}: images {images.shape} {images.dtype}, labels {labels.shape} {labels.dtype}")

num_classes = int(max(train[1].max(), test[1].max())) + 1
artifacts.save_json(
    out.card,
    {
        **source,
        "image_shape": list(train[0].shape[1:]),
        "num_classes": num_classes,
        "num_train": int(len(train[1])),
        "num_test": int(len(test[1])),
        "train_class_counts": np.bincount(train[1], minlength=num_classes).tolist(),
        "test_class_counts": np.bincount(test[1], minlength=num_classes).tolist(),
        "pixel_range": [int(train[0].min()), int(train[0].max())],
        "layout": "images uint8 (N, H, W, C); labels int64 (N,)",
    },
)
