"""latentfm: flow matching in the latent space of an autoencoder."""

__version__ = "0.1.0"
