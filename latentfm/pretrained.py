"""Models by name: the built-in models shipped in the package, exported model directories with their model card,
and Hugging Face Hub ids (``huggingface_hub``, the optional extra ``latentfm[hub]``).

An exported model directory is a checkpoint directory that holds only what generating needs (``state.json``,
``ema.safetensors``, the autoencoder's weights under ``autoencoder/`` when it has any) plus its model card,
``README.md``, whose YAML front matter records the SHA-256 of the weights; ``model_directory`` checks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from latentfm.checkpoint import file_sha256
from latentfm.errors import LatentFMError

CARD = "README.md"
WEIGHTS = "ema.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelCard:
    """The front matter of an exported model's ``README.md``: what ``latentfm models`` lists and loading checks."""

    directory: Path
    metadata: dict[str, Any]

    @property
    def weights_sha256(self) -> str | None:
        """The SHA-256 of ``ema.safetensors`` the card records."""
        return (self.metadata.get("latentfm") or {}).get("weights_sha256")

    @property
    def summary(self) -> str:
        """One line: what the model is."""
        return str((self.metadata.get("latentfm") or {}).get("summary", ""))


def builtin_models() -> dict[str, Path]:
    """The models shipped inside the package, by name (``latentfm models`` lists them).

    Example:
        >>> "fashion-mnist" in builtin_models()
        True
    """
    root = Path(str(resources.files("latentfm") / "pretrained"))
    if not root.is_dir():
        return {}
    return {path.name: path for path in sorted(root.iterdir()) if (path / "state.json").is_file()}


def read_card(directory: Path) -> ModelCard | None:
    """The model card of an exported directory (None when it has none: a run or checkpoint directory)."""
    path = Path(directory) / CARD
    if not path.is_file():
        return None
    text = path.read_text()
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise LatentFMError(f"{path} has no YAML front matter (--- ... ---): export the model again")
    try:
        metadata = yaml.safe_load(text[4 : text.index("\n---\n", 4)]) or {}
    except yaml.YAMLError:
        raise LatentFMError(f"{path}: its front matter is not valid YAML; export the model again") from None
    return ModelCard(Path(directory), metadata if isinstance(metadata, dict) else {})


def model_directory(name: str | Path) -> Path:
    """The local directory of a model: a run, checkpoint or exported directory as given; a built-in model's
    name; or a Hugging Face Hub id (``org/name``, downloaded once into the Hub cache; with ``HF_HUB_OFFLINE=1``
    only the cache is read). An exported directory's weights are checked against its card's hash."""
    path = Path(name)
    if path.exists():
        directory = path
    elif str(name) in builtin_models():
        directory = builtin_models()[str(name)]
    elif _HUB_ID.match(str(name)):
        directory = _hub_snapshot(str(name))
    else:
        known = ", ".join(builtin_models()) or "none installed"
        raise LatentFMError(
            f"unknown model {str(name)!r}: built-in models are {known} (latentfm models); or give a run, "
            "checkpoint or exported directory, or a Hugging Face Hub id such as org/name"
        )
    _check_weights(directory)
    return directory


def _check_weights(directory: Path) -> None:
    """Refuse an exported directory whose weights are missing or differ from its card's hash."""
    card = read_card(directory)
    if card is None or card.weights_sha256 is None:
        return
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise LatentFMError(f"{weights} is missing: this exported model is incomplete; export or download it again")
    if file_sha256(weights) != card.weights_sha256:
        raise LatentFMError(
            f"{weights} does not match the SHA-256 in {directory / CARD} ({card.weights_sha256[:12]}...): the file "
            "was altered or damaged; export or download the model again"
        )


def _hub_snapshot(repo_id: str) -> Path:
    """A Hub model repository in the local cache (downloaded first unless ``HF_HUB_OFFLINE`` is set)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise LatentFMError(
            f"model {repo_id!r} looks like a Hugging Face Hub id: install huggingface_hub (pip install "
            "'latentfm[hub]'), or give a built-in name or a local directory"
        ) from None
    try:
        return Path(snapshot_download(repo_id))
    except LocalEntryNotFoundError:
        raise LatentFMError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached (offline, "
            "or HF_HUB_OFFLINE=1): download it once while online, or give a local directory"
        ) from None
    except RepositoryNotFoundError:
        raise LatentFMError(f"model {repo_id!r} is not a Hugging Face Hub repository you can read") from None
    except OSError as error:  # connection errors are OSErrors (requests, httpx)
        raise LatentFMError(f"model {repo_id!r}: the Hub could not be reached ({type(error).__name__})") from None
