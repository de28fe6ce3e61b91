"""Image datasets (arrays in memory, image folders read lazily), batches read by worker processes, latent caches."""

from latentfm.data.dataset import ImageBatch, ImageData, ImageDataset
from latentfm.data.images import load_data_config, load_dataset
from latentfm.data.latent_cache import EncodedImages, LatentCache
from latentfm.data.loader import BatchRequest, read_batches

__all__ = [
    "BatchRequest",
    "EncodedImages",
    "ImageBatch",
    "ImageData",
    "ImageDataset",
    "LatentCache",
    "load_data_config",
    "load_dataset",
    "read_batches",
]
