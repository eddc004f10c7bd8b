"""The quantized checkpoint format that `cogvlm convert --quant 4|8` writes and every loader reads.

An HF directory (published `config.json` fields and key names, `model*.safetensors` shards and their
index), saved unsharded (MP=1). Every column- and row-parallel linear's `<name>.weight` holds int8
[out, in] (8 bits) or uint8 [out, in / 2] (4 bits: two values per byte, the even column in the high
nibble), and `<name>.weight_scale` its scales in the model dtype, [out] (per row) or
[out, in / group_size]; `w = q * scale`. Every other tensor is as in a float checkpoint. `config.json`
records the scheme as `"cogvlm_quantization": {"format": "cogvlm-weight-only-v1", "bits": 4,
"group_size": null}`. Tensor parallelism splits the integers and scales like the weight they replace.
"""

from __future__ import annotations

from collections.abc import Mapping

from cogvlm.errors import CheckpointError
from cogvlm.nn.quantized import QuantConfig

QUANT_FIELD = "cogvlm_quantization"
FORMAT_NAME = "cogvlm-weight-only-v1"


def quantization_field(quant: QuantConfig) -> dict:
    """The `config.json` entry describing `quant` (inverse of `read_quantization`)."""
    return {QUANT_FIELD: {"format": FORMAT_NAME, **quant.to_json()}}


def read_quantization(raw: Mapping, source: str) -> QuantConfig | None:
    """The quantization a `config.json` dict records, or None for a full-precision checkpoint."""
    value = raw.get(QUANT_FIELD)
    if value is None:
        return None
    if not isinstance(value, Mapping) or value.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f'{source}: {QUANT_FIELD} must be an object with "format": {FORMAT_NAME!r}, got {value!r}'
        )
    try:
        return QuantConfig.from_json(dict(value))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: {QUANT_FIELD}: {error}") from None
