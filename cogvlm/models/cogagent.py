"""CogAgent: CogVLM at low resolution, plus an EVA2-CLIP-L tower that every LLM layer cross-attends to.

The cross-attention weights (`query`, `key_value`, `dense`, `post_cross_attention_layernorm`) belong to
the base transformer's layers, as in SAT, because the config marks every layer a decoder. Between
self-attention and the MLP each layer adds `cross_attend(RMSNorm(h))` to its residual stream; the default
`cross_attend` reads each layer's keys and values from the `CrossMemory`, computed once per image.
"""

from __future__ import annotations

from cogvlm.mixins.cross_vision import CrossVisionEncoder
from cogvlm.mixins.image_embedding import ImageMixin
from cogvlm.mixins.lm_head import LMHead
from cogvlm.mixins.vision_expert import VisionExpertAttention, VisionExpertMLP
from cogvlm.models import mixin_names
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.config import CogVLMConfig
from cogvlm.models.eva import build_eva
from cogvlm.models.eva_large import EvaLargeEncoder
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel


def build_cogagent(config: CogVLMConfig, tp: TensorParallel = NO_PARALLEL) -> VisionLanguageModel:
    """The recipe: base LLaMA transformer with cross-attention layers, both towers, each mixin by name."""
    if config.cross_vision is None:
        raise ValueError(f"build_cogagent needs a config with a cross vision tower ({config.model_class!r})")
    model = VisionLanguageModel(config, tp)
    tower = build_eva(config.vision, tp)
    model.add_mixin(mixin_names.IMAGE, ImageMixin(tower, config.vision, config.llm, has_pos_embed=True))
    cross_tower = EvaLargeEncoder(config.cross_vision)
    model.add_mixin(mixin_names.CROSS_VISION, CrossVisionEncoder(cross_tower, config.cross_vision))
    model.add_mixin(mixin_names.EXPERT_ATTENTION, VisionExpertAttention(config.llm, tp))
    model.add_mixin(mixin_names.EXPERT_MLP, VisionExpertMLP(config.llm, tp))
    model.add_mixin(mixin_names.LM_HEAD, LMHead(config.llm, tp))
    return model
