"""DiT: a transformer velocity model with adaLN-Zero conditioning (Peebles & Xie, 2023).

The whole backbone is in this file, in the spirit of facebookresearch/DiT ``models.py``. Module and
parameter names follow that file, so a DiT/SiT state dict maps key for key (``learn_sigma=True``,
``num_classes=1000``). Time follows the library convention: ``t`` in [0, 1] with t=0 noise and t=1 data;
the model multiplies ``t`` by 1000 before its sinusoidal embedding (see ``TimestepEmbedder``).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentfm.condition import Condition
from latentfm.errors import LatentFMError
from latentfm.models.conditioning import check_velocity_inputs, concat_input, label_embedding
from latentfm.models.embeddings import LabelEmbedder, StepEmbedder, TimestepEmbedder, sincos_2d_pos_embed

DIT_SIZES: dict[str, dict[str, int]] = {
    "S": {"depth": 12, "hidden_size": 384, "num_heads": 6},
    "B": {"depth": 12, "hidden_size": 768, "num_heads": 12},
    "L": {"depth": 24, "hidden_size": 1024, "num_heads": 16},
    "XL": {"depth": 28, "hidden_size": 1152, "num_heads": 16},
}
PATCH_SIZES = (1, 2, 4, 8)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Apply a per-sample adaLN ``shift`` and ``scale`` ``[B, D]`` to tokens ``x`` ``[B, N, D]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """Cut an image into non-overlapping ``patch_size`` squares and project each one to a token."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, N, hidden_size]`` of ``x`` ``[B, C, H, W]``, row-major over patches."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention computed by ``scaled_dot_product_attention``."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens of ``x`` ``[B, N, D]``."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """The transformer feed-forward layer: Linear, GELU (tanh approximation), Linear."""

    def __init__(self, hidden_size: int, mlp_hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP token-wise."""
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """A transformer block whose norms are modulated, and whose branches gated, by the condition ``c``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Update tokens ``x`` ``[B, N, D]`` given the condition vector ``c`` ``[B, D]``."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, 1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN-modulated norm and a linear map from each token to its patch of output pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Patch values ``[B, N, p*p*C]`` of tokens ``x`` given the condition vector ``c``."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def _check_config(image_size: int, patch_size: int, hidden_size: int, num_heads: int) -> None:
    """Raise LatentFMError for a DiT shape configuration that cannot work."""
    if patch_size < 1 or image_size % patch_size != 0:
        raise LatentFMError(
            f"DiT: image_size {image_size} is not divisible by patch_size {patch_size}; "
            f"use a patch size that divides it, e.g. one of {PATCH_SIZES}"
        )
    if hidden_size % num_heads != 0 or hidden_size % 4 != 0:
        raise LatentFMError(f"DiT: hidden_size {hidden_size} must be divisible by num_heads {num_heads} and by 4")


class DiT(nn.Module):
    """Diffusion transformer predicting the velocity ``v = model(x, t, cond)``.

    ``x`` is ``[B, in_channels, image_size, image_size]``, ``t`` is ``[B]`` float in [0, 1] (scaled by
    1000 internally), ``cond`` optionally holds class ``labels`` ``[B]`` (null label ``num_classes``;
    missing labels mean unconditional) and ``concat`` channels ``[B, concat_channels, H, W]``.

    The concat channels have their own zero-initialised patch embedding added to the main one, so a
    trained checkpoint gains a condition without changing its output at first; a ``concat_encoder`` (a
    semantic map rescaler) turns ``cond.concat`` into those channels first and is part of the model.
    ``learn_sigma`` only doubles the output channels of the last layer for DiT/SiT checkpoint parity; the
    extra channels are dropped and the output always has the shape of ``x``. The output is exactly zero at init.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        class_dropout: float = 0.1,
        concat_channels: int = 0,
        concat_encoder: nn.Module | None = None,
        learn_sigma: bool = False,
        grad_checkpointing: bool = False,
        step_input: bool = False,
    ) -> None:
        super().__init__()
        _check_config(image_size, patch_size, hidden_size, num_heads)
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.concat_channels = concat_channels
        self.concat_encoder = concat_encoder
        self.grad_checkpointing = grad_checkpointing

        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.concat_embedder = PatchEmbed(concat_channels, hidden_size, patch_size) if concat_channels else None
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.step_embedder = StepEmbedder(hidden_size) if step_input else None
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout) if num_classes else None
        pos_embed = sincos_2d_pos_embed(hidden_size, image_size // patch_size)
        self.register_buffer("pos_embed", pos_embed.unsqueeze(0))
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, zeroed adaLN modulations, zeroed output and concat path."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.concat_embedder is not None:
            nn.init.zeros_(self.concat_embedder.proj.weight)
            nn.init.zeros_(self.concat_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.step_embedder is not None:  # a flow model given the step input starts unchanged
            nn.init.normal_(self.step_embedder.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.step_embedder.mlp[2].weight)
            nn.init.zeros_(self.step_embedder.mlp[2].bias)
        for layer in [block.adaLN_modulation[-1] for block in self.blocks] + [
            self.final_layer.adaLN_modulation[-1],
            self.final_layer.linear,
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        """Velocity ``[B, in_channels, H, W]`` at state ``x`` and time ``t`` given ``cond``."""
        cond = cond if cond is not None else Condition()
        check_velocity_inputs("DiT", x, t, (self.in_channels, self.image_size, self.image_size))
        tokens = self.x_embedder(x) + self.pos_embed
        concat = concat_input("DiT", cond, self.concat_channels, x, self.concat_encoder)
        if concat is not None:
            tokens = tokens + self.concat_embedder(concat)
        c = self.t_embedder(t) + label_embedding("DiT", self.y_embedder, cond.labels, x)
        if self.step_embedder is not None:
            c = c + self.step_embedder(cond.step, t)
        for block in self.blocks:
            tokens = self._run_block(block, tokens, c)
        out = self.unpatchify(self.final_layer(tokens, c))
        return out[:, : self.in_channels]

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Image ``[B, out_channels, H, W]`` from per-token patch values ``[B, N, p*p*out_channels]``."""
        p, c, h = self.patch_size, self.out_channels, self.image_size // self.patch_size
        patches = patches.reshape(patches.shape[0], h, h, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", patches).reshape(patches.shape[0], c, h * p, h * p)

    def _run_block(self, block: DiTBlock, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Apply ``block``, recomputing its activations in the backward pass when checkpointing."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, tokens, c, use_reentrant=False)
        return block(tokens, c)


def parse_dit_name(name: str) -> tuple[str, int]:
    """Split a name like ``"DiT-XL/2"`` into its size key of ``DIT_SIZES`` and its patch size.

    Raises LatentFMError listing the valid names, ``DiT-{S,B,L,XL}/{1,2,4,8}``, for any other name.
    """
    match = re.fullmatch(r"DiT-(S|B|L|XL)/(\d+)", name)
    if match is None or int(match.group(2)) not in PATCH_SIZES:
        valid = ", ".join(f"DiT-{size}/{patch}" for size in DIT_SIZES for patch in PATCH_SIZES)
        raise LatentFMError(f"unknown DiT model {name!r}; valid names: {valid}")
    return match.group(1), int(match.group(2))


def dit(name: str, **kwargs: object) -> DiT:
    """Build a published DiT size by name, e.g. ``dit("DiT-XL/2", in_channels=4, image_size=32)``.

    ``name`` is ``DiT-{S,B,L,XL}/{1,2,4,8}`` (size / patch size, see ``parse_dit_name``); ``kwargs`` go to
    ``DiT`` (passing ``patch_size``, ``depth``, ``hidden_size`` or ``num_heads`` again is a TypeError).
    """
    size, patch_size = parse_dit_name(name)
    return DiT(patch_size=patch_size, **DIT_SIZES[size], **kwargs)
