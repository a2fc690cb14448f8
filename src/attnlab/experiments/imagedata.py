"""The image task of the experiments: :data:`attnlab.tasks.image.SPEC` with two more data
options — ``train_size`` and ``test_size``, stratified subsets of the splits. Its runs are
image runs that record this module (:func:`attnlab.tasks.register_spec`): ``attnlab eval``,
``attnlab predict`` and ``runs.open`` read them as image runs, and resuming one keeps its subsets."""

from __future__ import annotations

from dataclasses import dataclass, replace

from attnlab.data import images as D
from attnlab.tasks import image, register_spec
from attnlab.train.config import opt, positive_int


@dataclass
class ImageSubsetConfig(image.ImageDataConfig):
    train_size: int | None = opt(None, "train on this many training images, the same share of each class (default: all)",
                                 positive_int, metavar="N")
    test_size: int | None = opt(None, "validate on this many test images, the same share of each class (default: all)",
                                positive_int, metavar="N")


def subset(ds: D.ImageDataset, n: int | None) -> D.ImageDataset:
    if n is None or n >= len(ds):
        return ds
    return ds.subset(D.stratified_split(ds.labels, n / len(ds), seed=0)[1])


def load_data(dc: ImageSubsetConfig, mcfg, run_dir=None, progress: bool = True, model_name: str = "the model"):
    data = image.load_data(dc, mcfg, run_dir, progress, model_name)
    data.train, data.val = subset(data.train, dc.train_size), subset(data.val, dc.test_size)
    data.info["dataset"].update(train_size=len(data.train), val_size=len(data.val))
    return data


SPEC = register_spec(replace(image.SPEC, data_config=ImageSubsetConfig, load_data=load_data), __name__)
