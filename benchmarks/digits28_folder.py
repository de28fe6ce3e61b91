"""scikit-learn's 8×8 digits resized to 28×28 grey PNGs in class-per-folder trees (the second dataset of
`benchmarks/peer_torchcfm.py`): OUT/train/<digit>/*.png (1,500 images) and OUT/test/<digit>/*.png (297), and
OUT/train.yaml, OUT/test.yaml (data sections that read them as grey images, for `--dataset`).

    python -m benchmarks.digits28_folder --out runs/digits28
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfm.atomic import write_bytes_atomic
from latentfm.data import load_dataset
from latentfm.image_io import save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/digits28")
    args = parser.parse_args()
    for split in ("train", "test"):
        data = load_dataset("digits", split=split, image_size=28)
        for index, (image, label) in enumerate(zip(data.images, data.labels)):
            save_png(image[0].numpy(), Path(args.out, split, str(int(label)), f"{index:05d}.png"))
        spec = f"data:\n  dataset: folder\n  path: {args.out}/{split}\n  channels: 1\n"
        write_bytes_atomic(Path(args.out, f"{split}.yaml"), spec.encode())
        print(f"{len(data.images)} {split} images in {args.out}/{split}")


if __name__ == "__main__":
    main()
