"""Tokenizer, prompt templates, and inference / training token inputs with image slots."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cogvlm.text_processors.image_slots import position_ids_from_rope_mask
    from cogvlm.text_processors.inference import (
        TextInputs,
        build_hf_inference_inputs,
        build_inference_inputs,
        build_turn_inputs,
    )
    from cogvlm.text_processors.prompts import (
        IMAGE_MARKER,
        PROMPT_STYLES,
        PROMPT_VERSIONS,
        PromptFormat,
        PromptStyle,
        PromptVersion,
        build_hf_prompt,
        build_prompt,
        check_style,
        check_version,
        extract_response,
        hf_template_for_version,
        response_separator,
        sat_version_for_hf_template,
    )
    from cogvlm.text_processors.streaming import IncrementalDecoder
    from cogvlm.text_processors.tokenizer import LlamaTokenizer, load_tokenizer, resolve_tokenizer_path
    from cogvlm.text_processors.training import SampleTooLong, TrainingInputs, build_training_inputs

# Each name and the module that defines it. They are imported on first use, so that reading prompts or boxes
# (the CLI parser, the synthetic-data writer) does not import torch.
_SOURCES = {
    "IMAGE_MARKER": "cogvlm.text_processors.prompts",
    "IncrementalDecoder": "cogvlm.text_processors.streaming",
    "LlamaTokenizer": "cogvlm.text_processors.tokenizer",
    "PROMPT_STYLES": "cogvlm.text_processors.prompts",
    "PROMPT_VERSIONS": "cogvlm.text_processors.prompts",
    "PromptFormat": "cogvlm.text_processors.prompts",
    "PromptStyle": "cogvlm.text_processors.prompts",
    "PromptVersion": "cogvlm.text_processors.prompts",
    "SampleTooLong": "cogvlm.text_processors.training",
    "TextInputs": "cogvlm.text_processors.inference",
    "TrainingInputs": "cogvlm.text_processors.training",
    "build_hf_inference_inputs": "cogvlm.text_processors.inference",
    "build_hf_prompt": "cogvlm.text_processors.prompts",
    "build_inference_inputs": "cogvlm.text_processors.inference",
    "build_prompt": "cogvlm.text_processors.prompts",
    "build_training_inputs": "cogvlm.text_processors.training",
    "build_turn_inputs": "cogvlm.text_processors.inference",
    "check_style": "cogvlm.text_processors.prompts",
    "check_version": "cogvlm.text_processors.prompts",
    "extract_response": "cogvlm.text_processors.prompts",
    "hf_template_for_version": "cogvlm.text_processors.prompts",
    "load_tokenizer": "cogvlm.text_processors.tokenizer",
    "position_ids_from_rope_mask": "cogvlm.text_processors.image_slots",
    "resolve_tokenizer_path": "cogvlm.text_processors.tokenizer",
    "response_separator": "cogvlm.text_processors.prompts",
    "sat_version_for_hf_template": "cogvlm.text_processors.prompts",
}

__all__ = [
    "IMAGE_MARKER",
    "IncrementalDecoder",
    "LlamaTokenizer",
    "PROMPT_STYLES",
    "PROMPT_VERSIONS",
    "PromptFormat",
    "PromptStyle",
    "PromptVersion",
    "SampleTooLong",
    "TextInputs",
    "TrainingInputs",
    "build_hf_inference_inputs",
    "build_hf_prompt",
    "build_inference_inputs",
    "build_prompt",
    "build_training_inputs",
    "build_turn_inputs",
    "check_style",
    "check_version",
    "extract_response",
    "hf_template_for_version",
    "load_tokenizer",
    "position_ids_from_rope_mask",
    "resolve_tokenizer_path",
    "response_separator",
    "sat_version_for_hf_template",
]


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value
