"""Tasks: what a condition is and how to build it, for training batches and at sampling time.

The trainer, the pipeline and the command line ask the task of the config's ``task`` section (absent: ``class``)
and never branch on which task it is. Tasks hold no weights: a learnable condition encoder is part of the model.
"""

from __future__ import annotations

from latentfm.errors import LatentFMError
from latentfm.tasks.classes import ClassTask, Task

TASKS = {"class": ClassTask}


def build_task(kind: str = "class") -> Task:
    """The task called ``kind`` (``task.kind`` in a config).

    Example:
        >>> build_task("class").kind
        'class'
    """
    if kind not in TASKS:
        raise LatentFMError(f"task.kind={kind!r} is unknown; use one of {', '.join(TASKS)}")
    return TASKS[kind]()


__all__ = ["ClassTask", "TASKS", "Task", "build_task"]
