"""CogVLM: LLaMA with the visual expert, rotary positions, an EVA2-CLIP-E image mixin and an LM head."""

from __future__ import annotations

from cogvlm.mixins.image_embedding import ImageMixin
from cogvlm.mixins.lm_head import LMHead
from cogvlm.mixins.vision_expert import VisionExpertAttention, VisionExpertMLP
from cogvlm.models import mixin_names
from cogvlm.models.base_model import MixinModel
from cogvlm.models.config import CogVLMConfig
from cogvlm.models.eva import build_eva
from cogvlm.models.transformer import Transformer
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel


class VisionLanguageModel(MixinModel):
    """A mixin model that also knows its whole configuration and tensor-parallel slice."""

    def __init__(self, config: CogVLMConfig, tp: TensorParallel = NO_PARALLEL) -> None:
        super().__init__(Transformer(config.llm, tp))
        self.config = config
        self.tp = tp


def build_cogvlm(config: CogVLMConfig, tp: TensorParallel = NO_PARALLEL) -> VisionLanguageModel:
    """The recipe: base LLaMA transformer, the EVA2-CLIP-E tower, then each mixin by name."""
    model = VisionLanguageModel(config, tp)
    tower = build_eva(config.vision, tp)
    model.add_mixin(mixin_names.IMAGE, ImageMixin(tower, config.vision, config.llm))
    model.add_mixin(mixin_names.EXPERT_ATTENTION, VisionExpertAttention(config.llm, tp))
    model.add_mixin(mixin_names.EXPERT_MLP, VisionExpertMLP(config.llm, tp))
    model.add_mixin(mixin_names.LM_HEAD, LMHead(config.llm, tp))
    return model
