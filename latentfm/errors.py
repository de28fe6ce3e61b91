"""The one exception type for problems a user can fix (bad config, missing file, corrupt data), and the helper
that names the first difference when a saved record and the present one disagree."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class LatentFMError(Exception):
    """A user-facing error: its message is one line that names the file, key or value and what to do.

    The CLI prints it without a traceback and exits with code 2.
    """


def unpickling_refused(error: BaseException) -> str | None:
    """The reason to give when ``torch.load(..., weights_only=True)`` refused a file for holding Python objects
    (a pickle that would run code), or None for any other error."""
    if "Weights only load failed" in str(error):
        return "it holds Python objects besides tensors, which latentfm never unpickles (nothing in it ran)"
    return None


@dataclass(frozen=True)
class Difference:
    """Where two records first differ: a dotted ``key`` with its ``old`` and ``new`` values."""

    key: str
    old: Any
    new: Any


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {prefix + key: value})
    return flat


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def first_difference(
    old: Mapping[str, Any], new: Mapping[str, Any], keys: Sequence[str] = (), ignore: Iterable[str] = ()
) -> Difference | None:
    """The first dotted key at which two nested records differ (None if they agree): keys in the order of
    ``keys`` (each also covers what lies under it), else sorted; keys under ``ignore`` are skipped. A key missing
    on one side has the value None there. Every identity check (resume, caches, references, weights) names its
    refusal with this.

    Example:
        >>> first_difference({"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}}, {"optim": {"lr": 2e-4}})
        Difference(key='optim.betas', old=[0.9, 0.99], new=None)
        >>> first_difference({"a": 1, "b": 2}, {"a": 1, "b": 3}, ignore=["b"]) is None
        True
    """
    flat_old, flat_new = _flatten(old), _flatten(new)
    candidates = sorted(set(flat_old) | set(flat_new))
    if keys:
        candidates = [key for prefix in keys for key in candidates if _under(key, [prefix])]
    for key in candidates:
        if not _under(key, ignore) and flat_old.get(key) != flat_new.get(key):
            return Difference(key, flat_old.get(key), flat_new.get(key))
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised at a safe point (a training step boundary) so that work is saved first; exit code 143."""
