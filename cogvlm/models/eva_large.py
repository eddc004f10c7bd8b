"""EVA2-CLIP-L, CogAgent's high-resolution tower, with the timm-style module names of its checkpoints.

Keys under the tower: `cls_token`, `pos_embed`, `patch_embed.proj`, `rope.freqs_cos/freqs_sin` (the one
rope module is shared by every block, so the state dict repeats its tables as `blocks.j.attn.rope.*`),
`blocks.j.{norm1, attn, norm2, mlp}`, `norm`, `head`. The reference builds `num_blocks` blocks and runs all
but the last; `norm` and `head` are never used, but they are in every checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cogvlm.models.config import CrossVisionConfig
from cogvlm.nn.attention import merge_heads, split_heads

ROPE_THETA = 10000.0


def rope_2d_tables(
    head_width: int, grid: int, pretrain_grid: int, theta: float = ROPE_THETA
) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA-02's 2-D rotary tables `(cos, sin)`, each [grid * grid, head_width], in float32.

    The first half of the head dimension rotates by the patch row, the second half by the column; the
    grid coordinate is interpolated onto the pre-training grid (`i * pretrain_grid / grid`).
    """
    half = head_width // 2
    frequencies = 1.0 / (theta ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    # The reference divides before it multiplies; the order changes the float32 coordinates.
    coordinates = torch.arange(grid) / grid * pretrain_grid
    angles = (coordinates[:, None] * frequencies[None, :]).repeat_interleave(2, dim=-1)  # [grid, half]
    rows = angles[:, None, :].expand(grid, grid, half)
    columns = angles[None, :, :].expand(grid, grid, half)
    table = torch.cat([rows, columns], dim=-1).reshape(grid * grid, head_width)  # row-major patches
    return table.cos(), table.sin()


def rotate_pairs(tensor: torch.Tensor) -> torch.Tensor:
    """GPT-J style rotation by 90 degrees of adjacent pairs: (x0, x1) -> (-x1, x0)."""
    pairs = tensor.unflatten(-1, (-1, 2))  # [..., head_width / 2, 2]
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class VisionRotary2D(nn.Module):
    """Holds the 2-D rope tables as persistent buffers (they are in checkpoints) and applies them."""

    computed_buffers = ("freqs_cos", "freqs_sin")

    def __init__(self, head_width: int, grid: int, pretrain_grid: int) -> None:
        super().__init__()
        self.head_width, self.grid, self.pretrain_grid = head_width, grid, pretrain_grid
        cos, sin = rope_2d_tables(head_width, grid, pretrain_grid)
        self.register_buffer("freqs_cos", cos, persistent=True)
        self.register_buffer("freqs_sin", sin, persistent=True)

    def reset_computed_buffers(self) -> None:
        """Recompute the tables (after a build on the meta device), keeping the buffers' dtype and device."""
        cos, sin = rope_2d_tables(self.head_width, self.grid, self.pretrain_grid)
        self.freqs_cos = cos.to(device=self.freqs_cos.device, dtype=self.freqs_cos.dtype)
        self.freqs_sin = sin.to(device=self.freqs_sin.device, dtype=self.freqs_sin.dtype)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rotate `tensor` [batch, heads, patches, head_width] by each patch's 2-D position."""
        return tensor * self.freqs_cos + rotate_pairs(tensor) * self.freqs_sin


class PatchEmbed(nn.Module):
    """A stride-`patch_size` convolution: [images, 3, px, px] -> [images, patches, width], row-major."""

    def __init__(self, config: CrossVisionConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            config.in_channels, config.width, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Separate q/k/v projections (learned q and v biases, none on k), 2-D rope, sub-LayerNorm, `proj`."""

    def __init__(self, config: CrossVisionConfig, rope: VisionRotary2D) -> None:
        super().__init__()
        width = config.width
        self.head_width = config.head_width
        self.scale = config.head_width**-0.5
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.rope = rope
        self.inner_attn_ln = nn.LayerNorm(width, eps=config.layernorm_epsilon)
        self.proj = nn.Linear(width, width)

    def _rotate_patches(self, tensor: torch.Tensor) -> torch.Tensor:
        # CLS (position 0) is not rotated. [batch, heads, 1 + patches, head_width]
        return torch.cat([tensor[:, :, :1], self.rope(tensor[:, :, 1:])], dim=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        query = F.linear(hidden_states, self.q_proj.weight, self.q_bias)
        key = self.k_proj(hidden_states)
        value = F.linear(hidden_states, self.v_proj.weight, self.v_bias)
        query, key, value = (split_heads(part, self.head_width) for part in (query, key, value))
        query = self._rotate_patches(query).type_as(value)  # [batch, heads, seq, head_width]
        key = self._rotate_patches(key).type_as(value)
        context = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
        return self.proj(self.inner_attn_ln(merge_heads(context)))


class SwiGLU(nn.Module):
    """`w3(ffn_ln(silu(w1 x) * w2 x))`, biases on every projection."""

    def __init__(self, config: CrossVisionConfig) -> None:
        super().__init__()
        width, hidden = config.width, config.mlp_hidden
        self.w1 = nn.Linear(width, hidden)
        self.w2 = nn.Linear(width, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=config.layernorm_epsilon)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(hidden_states)) * self.w2(hidden_states)))


class Block(nn.Module):
    """Pre-norm block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`."""

    def __init__(self, config: CrossVisionConfig, rope: VisionRotary2D) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.layernorm_epsilon)
        self.attn = Attention(config, rope)
        self.norm2 = nn.LayerNorm(config.width, eps=config.layernorm_epsilon)
        self.mlp = SwiGLU(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states))
        return hidden_states + self.mlp(self.norm2(hidden_states))


class EvaLargeVisionTransformer(nn.Module):
    """The EVA2-CLIP-L vision transformer (SAT's `vit.model`)."""

    def __init__(self, config: CrossVisionConfig) -> None:
        super().__init__()
        self.config = config
        width, grid = config.width, config.image_px // config.patch_size
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, width))
        self.rope = VisionRotary2D(config.head_width, grid, config.pretrain_grid)
        self.blocks = nn.ModuleList(Block(config, self.rope) for _ in range(config.num_blocks))
        self.norm = nn.LayerNorm(width, eps=config.layernorm_epsilon)
        self.head = nn.Linear(width, config.head_out_features)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Hidden states [images, 1 + patches, width] after every block but the last (CLS first)."""
        patches = self.patch_embed(pixel_values.to(self.patch_embed.proj.weight.dtype))
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        hidden_states = torch.cat([cls, patches], dim=1) + self.pos_embed
        # The reference builds the last block but never runs it.
        for block in self.blocks[:-1]:
            hidden_states = block(hidden_states)
        return hidden_states


class EvaLargeEncoder(nn.Module):
    """SAT's wrapper (`vit`) around the tower (`model`): patch features, no CLS, no final norm."""

    def __init__(self, config: CrossVisionConfig) -> None:
        super().__init__()
        self.model = EvaLargeVisionTransformer(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[images, 3, px, px] -> [images, patches, width]."""
        return self.model.forward_features(pixel_values)[:, 1:]
