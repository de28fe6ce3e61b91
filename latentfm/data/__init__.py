"""Image datasets (built-in digits, IDX directories, image folders) held in memory as uint8, and latent caches."""

from latentfm.data.images import ImageData, load_data_config, load_dataset
from latentfm.data.latent_cache import EncodedImages, LatentCache

__all__ = ["EncodedImages", "ImageData", "LatentCache", "load_data_config", "load_dataset"]
