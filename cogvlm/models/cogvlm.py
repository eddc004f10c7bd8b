"""CogVLM: LLaMA with the visual expert, rotary positions, an EVA2-CLIP-E image mixin and an LM head."""

from __future__ import annotations

from cogvlm.mixins.image_embedding import ImageMixin
from cogvlm.mixins.lm_head import LMHead
from cogvlm.mixins.vision_expert import VisionExpertAttention, VisionExpertMLP
from cogvlm.models.base_model import MixinModel
from cogvlm.models.config import CogVLMConfig
from cogvlm.models.transformer import Transformer
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel


class VisionLanguageModel(MixinModel):
    """A mixin model that also knows its whole configuration and tensor-parallel slice."""

    def __init__(self, config: CogVLMConfig, tp: TensorParallel = NO_PARALLEL) -> None:
        super().__init__(Transformer(config.llm, tp))
        self.config = config
        self.tp = tp


def build_cogvlm(config: CogVLMConfig, tp: TensorParallel = NO_PARALLEL) -> VisionLanguageModel:
    """The recipe: base LLaMA transformer, then each mixin by name."""
    model = VisionLanguageModel(config, tp)
    model.add_mixin("eva", ImageMixin(config, tp))
    model.add_mixin("rotary", VisionExpertAttention(config.llm, tp))
    model.add_mixin("mlp", VisionExpertMLP(config.llm, tp))
    model.add_mixin("lm", LMHead(config.llm, tp))
    return model
