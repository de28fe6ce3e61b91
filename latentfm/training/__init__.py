"""Training: the loop, EMA, checkpoints and the torchrun process group."""
