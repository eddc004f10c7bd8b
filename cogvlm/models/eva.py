"""EVA2-CLIP-E, the vision tower of CogVLM, built as a base transformer plus a patch-embedding mixin."""

from __future__ import annotations

from cogvlm.mixins.patch_embedding import PatchEmbedding
from cogvlm.models.base_model import MixinModel
from cogvlm.models.config import VisionConfig
from cogvlm.models.transformer import Transformer
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel


def build_eva(config: VisionConfig, tp: TensorParallel = NO_PARALLEL) -> MixinModel:
    """Post-branch-norm ViT: returns [images, 1 + patches, width] hidden states (CLS first)."""
    model = MixinModel(Transformer(config.transformer, tp))
    model.add_mixin("patch_embedding", PatchEmbedding(config))
    return model
