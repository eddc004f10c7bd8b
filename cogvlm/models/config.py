"""Frozen, typed configurations of the transformers, vision towers and whole models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cogvlm.errors import ConfigError

NormKind = Literal["rms", "layer"]
NormPlacement = Literal["pre", "post_branch"]
Activation = Literal["gelu", "silu"]
ModelClass = Literal["CogVLMModel", "CogAgentModel"]
MODEL_CLASSES: tuple[str, ...] = ("CogVLMModel", "CogAgentModel")


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
    position table. `head_dim = 0` means `hidden_size // num_attention_heads`.
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
        """Width of the query (and key, value) projections: heads x head_dim."""
        return self.num_attention_heads * self.head_dim


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
    """A whole CogVLM or CogAgent: the LLM, the vision tower(s) and the token conventions."""

    model_class: ModelClass
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
            self.model_class in MODEL_CLASSES,
            owner,
            f"model_class={self.model_class!r}, expected one of {MODEL_CLASSES}",
        )
        has_cross = self.llm.cross_attention is not None
        if self.model_class == "CogAgentModel":
            _require(
                self.cross_vision is not None and has_cross,
                owner,
                "CogAgentModel needs cross_vision and cross_attention",
            )
            _require(
                self.llm.cross_attention.encoder_hidden_size == self.cross_vision.width,
                owner,
                f"cross_attention.encoder_hidden_size={self.llm.cross_attention.encoder_hidden_size} "
                f"!= cross_vision.width={self.cross_vision.width}",
            )
        else:
            _require(
                self.cross_vision is None and not has_cross, owner, "CogVLMModel has no cross vision tower"
            )

    @property
    def image_length(self) -> int:
        """Image tokens per image in the LLM sequence (excluding boi and eoi)."""
        return self.vision.num_patches

    @property
    def is_cogagent(self) -> bool:
        """True for CogAgent (two vision towers and cross-attention)."""
        return self.model_class == "CogAgentModel"
