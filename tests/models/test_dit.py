"""Tests of the DiT backbone: sizes, shapes, adaLN-Zero init, conditioning, checkpointing."""

from __future__ import annotations

import pytest
import torch

from latentfm.errors import LatentFMError
from latentfm.models import DIT_SIZES, Condition, DiT, dit
from latentfm.models.dit import parse_dit_name

PUBLISHED_PARAMS = {"S": 33.0e6, "B": 130.5e6, "L": 458.0e6, "XL": 675.1e6}
SMALL = {"hidden_size": 32, "depth": 2, "num_heads": 4}


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter with small random values so the output is no longer zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def inputs(batch: int, channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random state and time batch."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=generator)
    return x, torch.rand(batch, generator=generator)


@pytest.mark.parametrize("size", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_published(size: str) -> None:
    with torch.device("meta"):
        model = dit(f"DiT-{size}/2", in_channels=4, image_size=32, num_classes=1000, learn_sigma=True)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / PUBLISHED_PARAMS[size] - 1) < 0.01
    assert len(model.blocks) == DIT_SIZES[size]["depth"]


@pytest.mark.parametrize("patch_size", [1, 2, 4, 8])
def test_forward_shape_and_zero_output_at_init(patch_size: int) -> None:
    model = DiT(in_channels=3, image_size=16, patch_size=patch_size, num_classes=5, **SMALL)
    x, t = inputs(2, 3, 16)
    v = model(x, t, Condition(labels=torch.tensor([0, 4])))
    assert v.shape == x.shape
    assert torch.equal(v, torch.zeros_like(v))


def test_learn_sigma_keeps_output_shape() -> None:
    model = DiT(in_channels=4, image_size=8, learn_sigma=True, **SMALL)
    perturb(model)
    x, t = inputs(2, 4, 8)
    assert model.final_layer.linear.out_features == 2 * 2 * 8
    assert model(x, t).shape == x.shape


def test_pos_embed_is_a_buffer() -> None:
    model = DiT(in_channels=4, image_size=8, **SMALL)
    assert "pos_embed" in dict(model.named_buffers())
    assert "pos_embed" not in dict(model.named_parameters())


def test_concat_path_is_a_no_op_at_init() -> None:
    plain = DiT(in_channels=4, image_size=8, num_classes=3, **SMALL).eval()
    perturb(plain)
    with_concat = DiT(in_channels=4, image_size=8, num_classes=3, concat_channels=2, **SMALL).eval()
    result = with_concat.load_state_dict(plain.state_dict(), strict=False)
    assert set(result.missing_keys) == {"concat_embedder.proj.weight", "concat_embedder.proj.bias"}
    x, t = inputs(2, 4, 8)
    labels = torch.tensor([1, 2])
    expected = plain(x, t, Condition(labels=labels))
    assert expected.abs().max() > 0
    got = with_concat(x, t, Condition(labels=labels, concat=torch.randn(2, 2, 8, 8)))
    torch.testing.assert_close(got, expected)


def test_concat_errors() -> None:
    model = DiT(in_channels=4, image_size=8, concat_channels=2, **SMALL)
    x, t = inputs(2, 4, 8)
    with pytest.raises(LatentFMError, match="cond.concat is missing"):
        model(x, t)
    with pytest.raises(LatentFMError, match=r"\(2, 3, 8, 8\).*\(2, 2, 8, 8\)"):
        model(x, t, Condition(concat=torch.zeros(2, 3, 8, 8)))
    with pytest.raises(LatentFMError, match="concat_channels=0"):
        DiT(in_channels=4, image_size=8, **SMALL)(x, t, Condition(concat=torch.zeros(2, 2, 8, 8)))


def test_labels_null_label_and_eval_mode() -> None:
    model = DiT(in_channels=4, image_size=8, num_classes=3, class_dropout=0.5, **SMALL).eval()
    perturb(model)
    x, t = inputs(4, 4, 8)
    labels = torch.tensor([0, 1, 2, 0])
    conditional = model(x, t, Condition(labels=labels))
    torch.testing.assert_close(model(x, t, Condition(labels=labels)), conditional)  # no dropout in eval
    unconditional = model(x, t)
    torch.testing.assert_close(model(x, t, Condition(labels=torch.full((4,), 3))), unconditional)
    assert not torch.allclose(conditional, unconditional)


def test_label_dropout_in_training_uses_the_global_rng() -> None:
    model = DiT(in_channels=4, image_size=8, num_classes=3, class_dropout=0.5, **SMALL).train()
    perturb(model)
    x, t = inputs(16, 4, 8)
    cond = Condition(labels=torch.zeros(16, dtype=torch.long))
    torch.manual_seed(3)
    first = model(x, t, cond)
    torch.manual_seed(3)
    torch.testing.assert_close(model(x, t, cond), first)
    model.y_embedder.dropout = 1.0
    torch.testing.assert_close(model(x, t, cond), model.eval()(x, t))


def test_labels_without_classes_raise() -> None:
    model = DiT(in_channels=4, image_size=8, **SMALL)
    x, t = inputs(2, 4, 8)
    with pytest.raises(LatentFMError, match="num_classes=0"):
        model(x, t, Condition(labels=torch.tensor([0, 1])))


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    models = [
        DiT(in_channels=4, image_size=8, num_classes=3, class_dropout=0.0, grad_checkpointing=flag, **SMALL)
        for flag in (False, True)
    ]
    x, t = inputs(2, 4, 8)
    cond = Condition(labels=torch.tensor([1, 2]))
    grads = []
    for model in models:
        model.double().train()
        perturb(model)
        model(x.double(), t.double(), cond).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain)


@pytest.mark.parametrize(("image_size", "patch_size"), [(8, 3), (10, 4), (8, 0)])
def test_bad_patch_size_raises(image_size: int, patch_size: int) -> None:
    with pytest.raises(LatentFMError, match="not divisible by patch_size"):
        DiT(in_channels=4, image_size=image_size, patch_size=patch_size, **SMALL)


def test_bad_input_shapes_raise() -> None:
    model = DiT(in_channels=4, image_size=8, **SMALL)
    x, t = inputs(2, 4, 8)
    with pytest.raises(LatentFMError, match="x has shape"):
        model(torch.zeros(2, 4, 16, 16), t)
    with pytest.raises(LatentFMError, match="t has shape"):
        model(x, t[:1])


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(LatentFMError, match="DiT-XL/2"):
        dit("DiT-M/2", in_channels=4, image_size=32)
    with pytest.raises(LatentFMError, match="valid names"):
        parse_dit_name("DiT-S/3")
    assert parse_dit_name("DiT-XL/4") == ("XL", 4)
    assert dit("DiT-S/8", in_channels=4, image_size=32).patch_size == 8
