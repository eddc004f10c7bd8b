"""Typed reading of checkpoint config files, and the one place both formats assemble a `CogVLMConfig`.

Every value read from a `model_config.json` or `config.json` is checked for type and range here, so a
hostile or broken file ends in a `CheckpointError` naming the file and the field, never in a traceback or
an allocation sized by an absurd number. The bounds are far above any published model and far below what
would exhaust a machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cogvlm.errors import CheckpointError, ConfigError
from cogvlm.models.config import (
    CogVLMConfig,
    CrossAttentionConfig,
    CrossVisionConfig,
    TransformerConfig,
    VisionConfig,
)
from cogvlm.models.presets import llama_config

MODEL_CONFIG_FILE = "model_config.json"  # a SAT checkpoint's config

_MISSING = object()
# Upper bounds of sizes (17B models: 32 layers, 4096 wide, 32000 tokens, 63 EVA layers, 1120 px).
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 17
MAX_HEADS = 1024
MAX_VOCAB = 1 << 22
MAX_SEQUENCE = 1 << 20
MAX_IMAGE_PX = 1 << 14
MAX_MODEL_PARALLEL = 1024
DEFAULT_ROTARY_BASE = 10000.0  # LLaMA 2's


class ConfigFields:
    """A config object (JSON mapping) read field by field; errors name `source` and the field's path."""

    def __init__(self, raw: object, source: str, path: str = "") -> None:
        if not isinstance(raw, Mapping):
            where = f" {path}" if path else ""
            raise CheckpointError(f"{source}:{where} expected an object, found {type(raw).__name__}")
        self.raw, self.source, self.path = raw, source, path

    def _name(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> CheckpointError:
        """An error about field `name`."""
        return CheckpointError(f"{self.source}: field {self._name(name)!r} {message}")

    def has(self, name: str) -> bool:
        """True when the field is present (even if null)."""
        return name in self.raw

    def _get(self, name: str, default: Any) -> Any:
        if name in self.raw:
            return self.raw[name]
        if default is _MISSING:
            raise CheckpointError(f"{self.source}: required field {self._name(name)!r} is missing")
        return default

    def integer(self, name: str, default: Any = _MISSING, *, minimum: int = 1, maximum: int) -> int:
        """An int in [minimum, maximum] (a bool is not an int here)."""
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"is {value!r}, expected an integer")
        if not minimum <= value <= maximum:
            raise self.error(name, f"is {value}, expected {minimum} to {maximum}")
        return value

    def number(self, name: str, default: Any = _MISSING, *, minimum: float, maximum: float) -> float:
        """A finite int or float in [minimum, maximum]."""
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise self.error(name, f"is {value!r}, expected a number")
        if not minimum <= value <= maximum:
            raise self.error(name, f"is {value}, expected {minimum} to {maximum}")
        return value

    def string(self, name: str, default: Any = _MISSING) -> str | None:
        """A string, or None where the default (or the file) says so."""
        value = self._get(name, default)
        if value is not None and not isinstance(value, str):
            raise self.error(name, f"is {value!r}, expected a string")
        return value

    def section(self, name: str, default: Any = _MISSING) -> ConfigFields:
        """A nested object."""
        value = self._get(name, default)
        if not isinstance(value, Mapping):
            raise self.error(name, f"is {value!r}, expected an object")
        return ConfigFields(value, self.source, self._name(name))

    def flags(self, name: str, count: int) -> tuple[bool, ...]:
        """A list of `count` booleans (default: all true)."""
        value = self._get(name, [True] * count)
        if not isinstance(value, list) or len(value) != count or not all(isinstance(v, bool) for v in value):
            raise self.error(name, f"must be a list of {count} booleans (one per layer)")
        return tuple(value)


def image_size(fields: ConfigFields, name: str) -> int:
    """An image size given as one int or as [height, width] with height == width."""
    value = fields._get(name, _MISSING)
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise fields.error(name, f"is {value!r}, expected a square size")
        fields = ConfigFields({name: value[0]}, fields.source, fields.path)
    return fields.integer(name, maximum=MAX_IMAGE_PX)


def assemble_config(
    fields: ConfigFields,
    *,
    model_class: str,
    llm_sizes: Mapping[str, Any],
    vision: VisionConfig,
    cross_vision: CrossVisionConfig | None,
    cross_attention: CrossAttentionConfig | None,
    text_processor_version: str | None,
    extra: Mapping | None = None,
) -> CogVLMConfig:
    """The `CogVLMConfig` of a translated checkpoint config; the token conventions share field names."""
    token_ids = {
        name: fields.integer(name, default, minimum=0, maximum=MAX_VOCAB)
        for name, default in (("bos_token_id", 1), ("eos_token_id", 2), ("pad_token_id", 0))
    }
    try:
        return CogVLMConfig(
            model_class=model_class,
            llm=llama_config(**llm_sizes, cross_attention=cross_attention),
            vision=vision,
            cross_vision=cross_vision,
            text_processor_version=text_processor_version,
            tokenizer_type=fields.string("tokenizer_type", "vicuna-7b-v1.5"),
            extra=dict(extra or {}),
            **token_ids,
        )
    except ConfigError as error:
        raise CheckpointError(f"{fields.source}: {error}") from None


def non_default_llm_options(llm: TransformerConfig, rotary_base_field: str) -> dict:
    """Grouped-query heads (`num_multi_query_heads`) and the rotary base, under the format's field names.

    Written only where they differ from LLaMA 2's, as the published CogVLM and CogAgent configs omit them.
    """
    raw = {}
    if llm.num_key_value_heads != llm.num_attention_heads:
        raw["num_multi_query_heads"] = llm.num_key_value_heads
    if llm.rotary_base != DEFAULT_ROTARY_BASE:
        raw[rotary_base_field] = llm.rotary_base
    return raw
