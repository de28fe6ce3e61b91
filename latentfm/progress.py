"""Progress bars: one way to make one, and one switch that turns them all off for the process
(``latentfm --quiet``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar of this process off (``True``) or back on."""
    global _quiet
    _quiet = quiet


def progress_bar(iterable: Iterable | None = None, *, show: bool = True, **options: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or to update by hand), shown when ``show`` and the process is not quiet.

    Example:
        >>> set_quiet(True)
        >>> [i for i in progress_bar(range(3), desc="counting")]
        [0, 1, 2]
        >>> set_quiet(False)
    """
    return tqdm(iterable, disable=_quiet or not show, **options)
