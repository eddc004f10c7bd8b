"""Tokenizer, prompt templates, and inference / training token inputs with image slots."""

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

__all__ = [
    "IMAGE_MARKER",
    "PROMPT_STYLES",
    "PROMPT_VERSIONS",
    "IncrementalDecoder",
    "LlamaTokenizer",
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
