"""Frozen, typed configurations of the transformers, vision towers and whole models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cogvlm.errors import ConfigError

NormKind = Literal["rms", "layer"]
NormPlacement = Literal["pre", "post_branch"]
Activation = Literal["gelu", "silu"]


def _require(condition: bool, owner: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{owner}: {message}")


@dataclass(frozen=True)
class CrossAttentionConfig:
    """Cross-attention of decoder layers to an encoder's outputs (CogAgent)."""

    encoder_hidden_size: int
    head_dim: int
    layers: tuple[bool, ...]

    def __post_init__(self) -> None:
        _require(
            self.encoder_hidden_size > 0,
            "CrossAttentionConfig",
            f"encoder_hidden_size={self.encoder_hidden_size}",
        )
        _require(self.head_dim > 0, "CrossAttentionConfig", f"head_dim={self.head_dim} must be > 0")


@dataclass(frozen=True)
class TransformerConfig:
    """A stack of attention + MLP layers (the LLM, or the EVA2-CLIP-E vision transformer).

    `norm_placement="pre"` normalises each branch's input (LLaMA); `"post_branch"` normalises each
    branch's output before the residual add (EVA2-CLIP-E). `num_positions > 0` adds a learned absolute
    position table. `head_dim = 0` means `hidden_size // num_attention_heads`. `num_key_value_heads` below
    `num_attention_heads` is grouped-query attention (each key/value head serves a group of query heads;
    0 means one per query head). `rotary_base` is the rotary embedding's base (LLaMA 2: 10000, LLaMA 3:
    500000).
    """

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    inner_hidden_size: int
    vocab_size: int
    max_sequence_length: int = 4096
    head_dim: int = 0
    use_bias: bool = False
    use_qkv_bias: bool = False
    norm: NormKind = "rms"
    layernorm_epsilon: float = 1e-5
    norm_placement: NormPlacement = "pre"
    is_causal: bool = True
    use_final_layernorm: bool = True
    activation: Activation = "gelu"
    row_parallel_linear_final_bias: bool = True
    num_positions: int = 0
    cross_attention: CrossAttentionConfig | None = None
    num_key_value_heads: int = 0
    rotary_base: float = 10000.0

    def __post_init__(self) -> None:
        owner = "TransformerConfig"
        for name in ("num_layers", "hidden_size", "num_attention_heads", "inner_hidden_size", "vocab_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, owner, f"{name}={value!r} must be a positive int")
        if self.head_dim == 0:
            _require(
                self.hidden_size % self.num_attention_heads == 0,
                owner,
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}",
            )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        _require(
            self.head_dim % 2 == 0, owner, f"head_dim={self.head_dim} must be even for rotary embeddings"
        )
        if self.num_key_value_heads == 0:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        _require(
            isinstance(self.num_key_value_heads, int)
            and 0 < self.num_key_value_heads <= self.num_attention_heads
            and self.num_attention_heads % self.num_key_value_heads == 0,
            owner,
            f"num_key_value_heads={self.num_key_value_heads!r} must divide "
            f"num_attention_heads={self.num_attention_heads}",
        )
        _require(self.rotary_base > 1, owner, f"rotary_base={self.rotary_base!r} must be > 1")
        _require(self.norm in ("rms", "layer"), owner, f"norm={self.norm!r}, expected 'rms' or 'layer'")
        _require(
            self.norm_placement in ("pre", "post_branch"),
            owner,
            f"norm_placement={self.norm_placement!r}, expected 'pre' or 'post_branch'",
        )
        _require(self.activation in ("gelu", "silu"), owner, f"activation={self.activation!r}")
        if self.cross_attention is not None:
            _require(
                len(self.cross_attention.layers) == self.num_layers,
                owner,
                f"cross_attention.layers has {len(self.cross_attention.layers)} entries, "
                f"expected {self.num_layers}",
            )

    @property
    def attention_width(self) -> int:
        """Width of the query projection (and of the attention output): heads x head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def key_value_width(self) -> int:
        """Width of the key (and of the value) projection: key/value heads x head_dim."""
        return self.num_key_value_heads * self.head_dim

    @property
    def qkv_part_weights(self) -> tuple[int, int, int] | None:
        """Relative sizes of the fused [Q; K; V] blocks, None when they are equal (no grouping)."""
        group = self.num_attention_heads // self.num_key_value_heads
        return None if group == 1 else (group, 1, 1)


@dataclass(frozen=True)
class VisionConfig:
    """EVA2-CLIP-E: a post-branch-norm ViT fed by a patch convolution, plus a CLS token."""

    transformer: TransformerConfig
    image_px: int
    patch_size: int = 14
    in_channels: int = 3

    def __post_init__(self) -> None:
        _require(
            self.image_px > 0 and self.image_px % self.patch_size == 0,
            "VisionConfig",
            f"image_px={self.image_px} must be a positive multiple of patch_size={self.patch_size}",
        )
        expected = self.num_patches + 1
        _require(
            self.transformer.num_positions == expected,
            "VisionConfig",
            f"transformer.num_positions={self.transformer.num_positions}, expected {expected} "
            "(patches + CLS)",
        )

    @property
    def num_patches(self) -> int:
        """Patches per image (the number of image tokens the LLM sees)."""
        return (self.image_px // self.patch_size) ** 2


@dataclass(frozen=True)
class CrossVisionConfig:
    """EVA2-CLIP-L, CogAgent's high-resolution tower. It builds `num_blocks` and runs all but the last."""

    image_px: int
    width: int
    num_blocks: int
    head_width: int
    patch_size: int = 14
    in_channels: int = 3
    mlp_ratio: float = 2.6667
    head_out_features: int = 768
    pretrain_grid: int = 16
    layernorm_epsilon: float = 1e-6

    def __post_init__(self) -> None:
        owner = "CrossVisionConfig"
        _require(
            self.image_px % self.patch_size == 0,
            owner,
            f"image_px={self.image_px} vs patch {self.patch_size}",
        )
        _require(
            self.width % self.head_width == 0, owner, f"width={self.width} vs head_width={self.head_width}"
        )
        _require(
            self.num_blocks >= 2, owner, f"num_blocks={self.num_blocks} must be >= 2 (the last is not run)"
        )

    @property
    def num_patches(self) -> int:
        """Patches per image, the length of the encoder output."""
        return (self.image_px // self.patch_size) ** 2

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU hidden width, `int(width * mlp_ratio)` as the reference computes it."""
        return int(self.width * self.mlp_ratio)

    @property
    def num_heads(self) -> int:
        """Attention heads of the tower."""
        return self.width // self.head_width


@dataclass(frozen=True)
class CogVLMConfig:
    """A whole CogVLM or CogAgent: the LLM, the vision tower(s) and the token conventions.

    `model_class` names the family whose recipe builds it (`models.builders.FAMILIES`). Optional parts are
    described by optional fields: a `cross_vision` tower, which the LLM's `cross_attention` reads.
    """

    model_class: str
    llm: TransformerConfig
    vision: VisionConfig
    cross_vision: CrossVisionConfig | None = None
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    text_processor_version: str | None = None
    tokenizer_type: str = "vicuna-7b-v1.5"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        owner = "CogVLMConfig"
        _require(
            isinstance(self.model_class, str) and bool(self.model_class),
            owner,
            f"model_class={self.model_class!r} must be a non-empty string",
        )
        cross = self.llm.cross_attention
        _require(
            (self.cross_vision is None) == (cross is None),
            owner,
            "a cross vision tower and the LLM's cross_attention come together (one is missing)",
        )
        if cross is not None:
            _require(
                cross.encoder_hidden_size == self.cross_vision.width,
                owner,
                f"cross_attention.encoder_hidden_size={cross.encoder_hidden_size} "
                f"!= cross_vision.width={self.cross_vision.width}",
            )

    @property
    def image_length(self) -> int:
        """Image tokens per image in the LLM sequence (excluding boi and eoi)."""
        return self.vision.num_patches

    @property
    def has_cross_vision(self) -> bool:
        """True when a second, high-resolution tower feeds cross-attention (CogAgent)."""
        return self.cross_vision is not None
