"""distributed.py in a single process (the torchrun paths run in tests/data/test_folder.py, tests/training and
tests/evaluation, two ranks each)."""

from __future__ import annotations

import pytest
import torch

from latentfm.distributed import (
    barrier,
    gather_ranks,
    is_main_rank,
    mean_across_ranks,
    resolve_device,
    setup_distributed,
    teardown_distributed,
)
from latentfm.errors import LatentFMError


def test_a_single_process_is_rank_zero_of_one(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = setup_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device, info.is_main) == (
        0,
        1,
        0,
        torch.device("cpu"),
        True,
    )
    value = torch.tensor([1.0, 2.0])
    assert is_main_rank() and mean_across_ranks(value) is value and gather_ranks(value) is value
    barrier()
    teardown_distributed()  # nothing joined: nothing to leave


def test_devices_by_name():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda:1") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto", local_rank=1) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_names_the_setting():
    with pytest.raises(LatentFMError, match=r"--device cuda:0: CUDA is not available here; use cpu or auto"):
        resolve_device("cuda:0", what="--device")


def test_a_device_that_is_no_device_is_refused():
    with pytest.raises(LatentFMError, match="train.device 'gpu' is not a device"):
        resolve_device("gpu")
