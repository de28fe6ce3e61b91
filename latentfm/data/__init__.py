"""Image datasets (built-in digits, IDX directories, image folders) held in memory as uint8."""

from latentfm.data.images import ImageData, load_dataset

__all__ = ["ImageData", "load_dataset"]
