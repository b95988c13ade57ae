"""Data layer: folder scan, decode-once cache, splits, synthetic fish, digits, augmentation, loaders."""

from cnnclinic.data.bundle import DataBundle, load_data
from cnnclinic.data.dataset import IMAGENET_MEAN, IMAGENET_STD, CachedImageDataset
from cnnclinic.data.folder import SkippedFile
from cnnclinic.data.loaders import Loaders, make_loaders
from cnnclinic.data.synthetic import generate_synthetic_fish

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CachedImageDataset",
    "DataBundle",
    "Loaders",
    "SkippedFile",
    "generate_synthetic_fish",
    "load_data",
    "make_loaders",
]
