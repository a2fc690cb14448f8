"""Datasets read from local files only: images (:mod:`attnlab.data.images`)."""

from attnlab.data.images import ImageDataset, ImageSplits, data_root
from attnlab.data.images import load as load_images

__all__ = ["ImageDataset", "ImageSplits", "data_root", "load_images"]
