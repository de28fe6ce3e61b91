"""Velocity backbones with the signature ``model(x, t, cond) -> v`` and their conditioning."""

from latentfm.condition import Condition
from latentfm.models.dit import DIT_SIZES, DiT, dit

__all__ = ["DIT_SIZES", "Condition", "DiT", "dit"]
