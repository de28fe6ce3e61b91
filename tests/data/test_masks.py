import pytest
import torch

from latentfm.data.masks import MaskSettings, box_mask, draw_masks, stroke_mask
from latentfm.errors import LatentFMError


def test_masks_are_binary_seeded_and_cover_the_asked_fraction():
    settings = MaskSettings(min_fraction=0.2, max_fraction=0.4, everything_probability=0.0)
    first = draw_masks(64, 28, settings, torch.Generator().manual_seed(3))
    again = draw_masks(64, 28, settings, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert not torch.equal(first, draw_masks(64, 28, settings, torch.Generator().manual_seed(4)))
    assert ((first == 0) | (first == 1)).all()
    coverage = first.mean(dim=(1, 2, 3))
    assert coverage.min() > 0.1 and coverage.max() < 0.75 and 0.2 < coverage.mean() < 0.5
    assert (coverage < 1).all()  # no "everything" mask at probability 0


def test_box_and_stroke_families_differ_in_shape():
    generator = torch.Generator().manual_seed(0)
    box = box_mask(28, 0.3, generator)
    rows, cols = box.nonzero().unbind(1)
    assert box.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a filled rectangle
    stroke = stroke_mask(28, 0.3, generator)
    assert stroke.mean() >= 0.3
    rows, cols = stroke.nonzero().unbind(1)
    assert stroke.sum() < (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_everything_masks_come_with_their_probability():
    masks = draw_masks(400, 8, MaskSettings(everything_probability=0.25), torch.Generator().manual_seed(0))
    everything = (masks.flatten(1) == 1).all(dim=1).float().mean().item()
    assert 0.18 < everything < 0.32


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"kinds": ("lasso",)}, "'lasso' is unknown"),
        ({"kinds": ()}, "is unknown"),
        ({"min_fraction": 0.6, "max_fraction": 0.5}, "need 0 < min <= max <= 1"),
        ({"everything_probability": 1.5}, "everything_probability=1.5"),
    ],
)
def test_mask_settings_reject_bad_values(bad, message):
    with pytest.raises(LatentFMError, match=message):
        MaskSettings(**bad)
