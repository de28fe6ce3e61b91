"""``python -m latentfm.cli`` (what ``torchrun -m latentfm.cli`` runs)."""

import sys

from latentfm.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
