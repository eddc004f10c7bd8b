"""The hand-written table from a config's model class to the builder that makes it."""

from __future__ import annotations

import torch

from cogvlm.models.cogagent import build_cogagent
from cogvlm.models.cogvlm import VisionLanguageModel, build_cogvlm
from cogvlm.models.config import CogVLMConfig
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel

BUILDERS = {
    "CogVLMModel": build_cogvlm,
    "CogAgentModel": build_cogagent,
}


def build_model(
    config: CogVLMConfig, tp: TensorParallel = NO_PARALLEL, *, device: torch.device | str = "cpu"
) -> VisionLanguageModel:
    """Build the model a config describes, on `device` (`"meta"` allocates nothing)."""
    try:
        builder = BUILDERS[config.model_class]
    except KeyError:
        raise ValueError(
            f"no builder for model_class {config.model_class!r}; known: {sorted(BUILDERS)}"
        ) from None
    with torch.device(device):
        return builder(config, tp)
