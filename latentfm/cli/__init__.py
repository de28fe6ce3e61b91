"""The ``latentfm`` command: it only parses arguments and wires the library together; every result is written by
the module that owns it. One module per command family, each parser beside its commands:

- ``train``: train, train-refiner, train-autoencoder, encode, demo
- ``generate``: sample, inpaint, upsample, search-schedule (``inputs``: what they read from the user)
- ``evaluate``: train-classifier, stats, eval
- ``bench``: bench solvers, bench turbo
- ``info``: what a run or checkpoint directory holds
- ``options``: options several commands share (device, output, seeds, counts, datasets, sampler flags)
- ``app``: the parser and ``main``, where errors become exit codes
"""

from latentfm.cli.app import build_parser, main
from latentfm.cli.options import dataset_config

__all__ = ["build_parser", "dataset_config", "main"]
