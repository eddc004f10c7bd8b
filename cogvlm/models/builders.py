"""The one hand-written table of model families: SAT's `model_class` -> recipe and its other names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from cogvlm.models.cogagent import build_cogagent
from cogvlm.models.cogvlm import VisionLanguageModel, build_cogvlm
from cogvlm.models.config import CogVLMConfig
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel


@dataclass(frozen=True)
class ModelFamily:
    """One architecture: its SAT `model_class`, its recipe, and what the HF port calls it.

    `hf_template_versions` maps the HF port's `template_version` names to our prompt versions where the
    two differ (HF CogVLM's "chat" is SAT's Question/Answer format, `chat_old`); `hf_prompts` names the HF
    port whose prompt texts `--prompt_style hf` follows (`text_processors.prompts.build_hf_prompt`).
    """

    model_class: str
    build: Callable[[CogVLMConfig, TensorParallel], VisionLanguageModel]
    hf_architecture: str
    hf_template_versions: Mapping[str, str] = field(default_factory=dict)
    hf_prompts: str = "cogvlm"

    def version_from_hf(self, template: str | None) -> str | None:
        """Our prompt version for the HF port's `template_version`."""
        return self.hf_template_versions.get(template, template) if template is not None else None

    def version_to_hf(self, version: str | None) -> str | None:
        """The HF port's `template_version` for our prompt version."""
        reverse = {ours: theirs for theirs, ours in self.hf_template_versions.items()}
        return reverse.get(version, version) if version is not None else None


FAMILIES: dict[str, ModelFamily] = {
    family.model_class: family
    for family in (
        ModelFamily("CogVLMModel", build_cogvlm, "CogVLMForCausalLM", {"chat": "chat_old"}),
        ModelFamily("CogAgentModel", build_cogagent, "CogAgentForCausalLM", hf_prompts="cogagent"),
    )
}


def model_family(model_class: str) -> ModelFamily:
    """The family of a SAT `model_class`, or an error naming the known ones."""
    try:
        return FAMILIES[model_class]
    except (KeyError, TypeError):
        raise ValueError(f"model_class {model_class!r} is not supported; known: {sorted(FAMILIES)}") from None


def family_of_hf_architecture(architectures: object) -> ModelFamily | None:
    """The family an HF `architectures` list names, or None when it names none of ours."""
    if not isinstance(architectures, list):
        return None
    return next((f for f in FAMILIES.values() if f.hf_architecture in architectures), None)


def build_model(
    config: CogVLMConfig, tp: TensorParallel = NO_PARALLEL, *, device: torch.device | str = "cpu"
) -> VisionLanguageModel:
    """Build the model a config describes, on `device` (`"meta"` allocates nothing)."""
    family = model_family(config.model_class)
    with torch.device(device):
        return family.build(config, tp)
