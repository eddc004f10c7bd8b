"""Named model sizes: the published ones and the tiny and small ones used by tests and benchmarks."""

from __future__ import annotations

from cogvlm.models.config import (
    CogVLMConfig,
    CrossAttentionConfig,
    CrossVisionConfig,
    TransformerConfig,
    VisionConfig,
)


def llama_config(
    *,
    layers: int,
    hidden: int,
    heads: int,
    inner: int,
    vocab: int,
    max_length: int = 4096,
    cross_attention: CrossAttentionConfig | None = None,
    kv_heads: int = 0,
    rotary_base: float = 10000.0,
) -> TransformerConfig:
    """The Vicuna/LLaMA language model: pre-RMSNorm, no biases, rotary positions, causal.

    `kv_heads` below `heads` is grouped-query attention (LLaMA 3); 0 means one per query head.
    """
    return TransformerConfig(
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        inner_hidden_size=inner,
        vocab_size=vocab,
        max_sequence_length=max_length,
        norm="rms",
        layernorm_epsilon=1e-5,
        activation="silu",
        cross_attention=cross_attention,
        num_key_value_heads=kv_heads,
        rotary_base=rotary_base,
    )


def eva_config(
    *, image_px: int, layers: int, width: int, heads: int, inner: int, patch: int = 14
) -> VisionConfig:
    """EVA2-CLIP-E: LayerNorm after each branch, biases on, no final norm, a learned position table."""
    positions = (image_px // patch) ** 2 + 1
    transformer = TransformerConfig(
        num_layers=layers,
        hidden_size=width,
        num_attention_heads=heads,
        inner_hidden_size=inner,
        vocab_size=1,
        max_sequence_length=positions,
        use_bias=True,
        use_qkv_bias=True,
        norm="layer",
        layernorm_epsilon=1e-6,
        norm_placement="post_branch",
        is_causal=False,
        use_final_layernorm=False,
        activation="gelu",
        row_parallel_linear_final_bias=False,
        num_positions=positions,
    )
    return VisionConfig(transformer=transformer, image_px=image_px, patch_size=patch)


def cogvlm_config(llm: TransformerConfig, vision: VisionConfig, **kwargs) -> CogVLMConfig:
    """A CogVLM from its language model and vision tower."""
    return CogVLMConfig(model_class="CogVLMModel", llm=llm, vision=vision, **kwargs)


def cogagent_config(
    llm_sizes: dict, vision: VisionConfig, cross: CrossVisionConfig, cross_head_dim: int, **kwargs
) -> CogVLMConfig:
    """A CogAgent: cross-attention in every LLM layer to the high-resolution tower's output."""
    attention = CrossAttentionConfig(
        encoder_hidden_size=cross.width, head_dim=cross_head_dim, layers=(True,) * llm_sizes["layers"]
    )
    llm = llama_config(**llm_sizes, cross_attention=attention)
    return CogVLMConfig(model_class="CogAgentModel", llm=llm, vision=vision, cross_vision=cross, **kwargs)


_LLAMA_7B = dict(layers=32, hidden=4096, heads=32, inner=11008, vocab=32000, max_length=4096)
_TINY_LLM = dict(layers=2, hidden=64, heads=4, inner=128, vocab=1024, max_length=1024)
_SMALL_LLM = dict(layers=8, hidden=512, heads=8, inner=1408, vocab=1024, max_length=1024)
_EVA_E = dict(layers=63, width=1792, heads=16, inner=15360)
_TINY_EVA = dict(layers=2, width=32, heads=4, inner=64)
_SMALL_EVA = dict(layers=6, width=256, heads=4, inner=1024)
_TINY_TOKENS = dict(tokenizer_type="tiny-llama-sentencepiece-bpe-1024")


def _build_presets() -> dict[str, CogVLMConfig]:
    return {
        "cogvlm-17b-490": cogvlm_config(llama_config(**_LLAMA_7B), eva_config(image_px=490, **_EVA_E)),
        "cogvlm-17b-224": cogvlm_config(llama_config(**_LLAMA_7B), eva_config(image_px=224, **_EVA_E)),
        "cogagent-18b": cogagent_config(
            _LLAMA_7B,
            eva_config(image_px=224, **_EVA_E),
            CrossVisionConfig(image_px=1120, width=1024, num_blocks=24, head_width=64),
            cross_head_dim=32,
        ),
        "tiny-cogvlm": cogvlm_config(
            llama_config(**_TINY_LLM), eva_config(image_px=56, **_TINY_EVA), **_TINY_TOKENS
        ),
        "tiny-cogagent": cogagent_config(
            _TINY_LLM,
            eva_config(image_px=56, **_TINY_EVA),
            CrossVisionConfig(image_px=84, width=32, num_blocks=3, head_width=16),
            cross_head_dim=8,
            **_TINY_TOKENS,
        ),
        # The model shipped inside the package (`cogvlm/embedded`), trained on `cogvlm.train.synthetic` data.
        "embedded-cogvlm": cogvlm_config(
            llama_config(layers=4, hidden=256, heads=4, inner=512, vocab=640, max_length=256),
            eva_config(image_px=112, layers=4, width=192, heads=4, inner=512),
            tokenizer_type="cogvlm-embedded-bpe-640",
            text_processor_version="chat_old",
        ),
        "small-cogvlm": cogvlm_config(
            llama_config(**_SMALL_LLM), eva_config(image_px=224, **_SMALL_EVA), **_TINY_TOKENS
        ),
        "small-cogagent": cogagent_config(
            _SMALL_LLM,
            eva_config(image_px=224, **_SMALL_EVA),
            CrossVisionConfig(image_px=448, width=128, num_blocks=4, head_width=64),
            cross_head_dim=32,
            **_TINY_TOKENS,
        ),
    }


PRESETS: dict[str, CogVLMConfig] = _build_presets()


def preset(name: str) -> CogVLMConfig:
    """Return the named preset, or raise an error listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None
