"""LoRA as a module swap that keeps SAT's checkpoint layout.

A wrapped linear layer at `<path>` becomes a `LoraLinear` whose keys are `<path>.original.weight` (and
`.bias`), `<path>.matrix_A.<i>` [rank, in] and `<path>.matrix_B.<i>` [out / parts, rank], one pair per
fused part (3 for QKV, 2 for the cross-attention key_value). The output is
`original(x) + concat_i(B_i A_i dropout(x)) * alpha / rank`. The `lora` mixin itself owns no parameters:
it records the configuration and which paths it wrapped, as SAT's `LoraMixin` does.

QLoRA: the wrapped layer may be a quantized one (`quantize_` first, then `add_lora`). Its integers and
scales stay frozen buffers under `original.*`; A and B are floating-point parameters in the scales' dtype,
and merging folds the update into the dequantized weight, giving a plain floating-point layer back.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cogvlm.models import mixin_names
from cogvlm.models.mixin import Mixin
from cogvlm.nn.quantized import dequantized_copy, is_quantized
from cogvlm.parallel.collectives import copy_to_parallel, reduce_from_parallel
from cogvlm.parallel.groups import NO_PARALLEL
from cogvlm.parallel.sharding import REPLICATED, ShardRule, shard_tensor

LORA_MIXIN_NAME = "lora"
_LLM_LAYERS = "transformer.layers.{i}."
_EVA_LAYERS = mixin_names.prefix(mixin_names.IMAGE) + "vit_model.transformer.layers.{i}."
_EXPERT_ATTENTION = mixin_names.prefix(mixin_names.EXPERT_ATTENTION)
_EXPERT_MLP = mixin_names.prefix(mixin_names.EXPERT_MLP)

# Target name -> (tower, module path templates). `{i}` is a layer index of that tower.
LORA_TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "language_attention": (
        "llm",
        (_LLM_LAYERS + "attention.query_key_value", _LLM_LAYERS + "attention.dense"),
    ),
    "vision_expert_attention": (
        "llm",
        (_EXPERT_ATTENTION + "vision_query_key_value_list.{i}", _EXPERT_ATTENTION + "vision_dense_list.{i}"),
    ),
    "cross_attention": (
        "llm",
        tuple(_LLM_LAYERS + f"cross_attention.{name}" for name in ("query", "key_value", "dense")),
    ),
    "language_mlp": (
        "llm",
        (_LLM_LAYERS + "mlp.dense_h_to_4h", _LLM_LAYERS + "mlp.dense_4h_to_h", _EXPERT_MLP + "gate_proj.{i}"),
    ),
    "vision_expert_mlp": (
        "llm",
        (
            _EXPERT_MLP + "vision_dense_h_to_4h_list.{i}",
            _EXPERT_MLP + "vision_dense_4h_to_h_list.{i}",
            _EXPERT_MLP + "vision_gate_proj.{i}",
        ),
    ),
    "vision_attention": (
        "vision",
        (_EVA_LAYERS + "attention.query_key_value", _EVA_LAYERS + "attention.dense"),
    ),
}
# What the reference fine-tuning wraps: the language path's attention and the EVA tower's attention
# (plus cross-attention on CogAgent, added by `reference_targets`).
DEFAULT_TARGETS = ("language_attention", "vision_attention")


@dataclass(frozen=True)
class LoraConfig:
    """Rank, scaling, dropout, targets and layer ranges of a LoRA adapter.

    `layer_range` selects LLM layers and `vision_layer_range` EVA layers; None means every layer.
    """

    rank: int = 10
    alpha: float = 1.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    layer_range: tuple[int, ...] | None = None
    vision_layer_range: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoraConfig.rank must be a positive int, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoraConfig.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets:
            raise ValueError("LoraConfig.targets is empty; name at least one of " + ", ".join(LORA_TARGETS))
        unknown = [name for name in self.targets if name not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {unknown}; known targets: {', '.join(LORA_TARGETS)}")
        for name in ("layer_range", "vision_layer_range"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(index) for index in value))

    @property
    def scaling(self) -> float:
        """The factor applied to the low-rank product: alpha / rank."""
        return self.alpha / self.rank

    def to_json(self) -> dict:
        """A JSON-friendly dict (inverse of `from_json`)."""
        data = asdict(self)
        for name in ("targets", "layer_range", "vision_layer_range"):
            data[name] = None if data[name] is None else list(data[name])
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> LoraConfig:
        """Parse `to_json`'s output, naming unknown fields."""
        known = {"rank", "alpha", "dropout", "targets", "layer_range", "vision_layer_range", "seed"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"lora_args has unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in data.items()})


class LoraFactors(nn.Module):
    """One matrix per fused part, named "0", "1", … (SAT's `matrix_A.<i>` / `matrix_B.<i>`)."""

    def __init__(self, tensors: Iterable[torch.Tensor], rule: ShardRule) -> None:
        super().__init__()
        tensors = list(tensors)
        for index, tensor in enumerate(tensors):
            self.register_parameter(str(index), nn.Parameter(tensor))
        self.shard_rules = {str(index): rule for index in range(len(tensors))}

    def __len__(self) -> int:
        return len(self.shard_rules)

    def __getitem__(self, index: int) -> nn.Parameter:
        return getattr(self, str(index))

    def stacked(self) -> torch.Tensor:
        """All parts concatenated along dim 0."""
        return torch.cat([self[index] for index in range(len(self))], dim=0)


def _split_dim(layer: nn.Module) -> int | None:
    rules = getattr(layer, "shard_rules", {})
    rule = rules.get("weight", REPLICATED)
    return rule.dim


def _fused_part_sizes(layer: nn.Module, out_features: int) -> list[int]:
    rule = getattr(layer, "shard_rules", {}).get("weight", REPLICATED)
    try:
        return rule.part_sizes(out_features)
    except ValueError:
        raise ValueError(
            f"out_features {out_features} does not split into {rule.parts} fused parts"
        ) from None


def _compute_dtype(layer: nn.Module) -> torch.dtype:
    # A quantized layer's weight holds integers; its activations run in its scales' dtype.
    return layer.weight_scale.dtype if is_quantized(layer) else layer.weight.dtype


def _base_weight_float32(layer: nn.Module) -> torch.Tensor:
    """The wrapped layer's local weight in float32 (dequantized for a quantized layer)."""
    return layer.dequantized_weight(torch.float32) if is_quantized(layer) else layer.weight.float()


class LoraLinear(nn.Module):
    """`original(x) + concat_i(B_i A_i dropout(x)) * scaling` for a (possibly tensor-parallel) linear layer.

    Column-parallel layers keep A whole and split each B_i by rows (rank r holds its slice of every
    part); row-parallel layers split A by columns and keep B whole. The low-rank activations pass
    through the same collectives as the layer's own input and output, so gradients are exact under TP.
    """

    def __init__(self, original: nn.Module, config: LoraConfig, init_seed: int) -> None:
        super().__init__()
        if getattr(original, "gather_output", False):
            raise ValueError("LoRA cannot wrap a layer that gathers its output (the LM head)")
        weight = original.weight
        self.original = original
        self.tp = getattr(original, "tp", NO_PARALLEL)
        self.split_dim = _split_dim(original) if self.tp.is_parallel else None
        full_in = getattr(original, "in_features", weight.shape[1])
        full_out = getattr(original, "out_features", weight.shape[0])
        part_sizes = _fused_part_sizes(original, full_out)  # [Q; K; V] may differ under grouped queries
        self.parts = len(part_sizes)
        self.rank = config.rank
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        a_rule = ShardRule(1) if _split_dim(original) == 1 else REPLICATED
        b_rule = ShardRule(0) if _split_dim(original) == 0 else REPLICATED
        generator = torch.Generator().manual_seed(init_seed)
        bound = 1.0 / math.sqrt(full_in)  # kaiming_uniform(a=sqrt(5)) on the whole [rank, in] matrix
        a_parts, b_parts = [], []
        for part_size in part_sizes:
            whole_a = torch.empty(self.rank, full_in).uniform_(-bound, bound, generator=generator)
            a_parts.append(shard_tensor(whole_a, a_rule, self.tp.rank, self.tp.size))
            whole_b = torch.zeros(part_size, self.rank)
            b_parts.append(shard_tensor(whole_b, b_rule, self.tp.rank, self.tp.size))
        to = dict(dtype=_compute_dtype(original), device=weight.device)
        self.matrix_A = LoraFactors((a.to(**to) for a in a_parts), a_rule)
        self.matrix_B = LoraFactors((b.to(**to) for b in b_parts), b_rule)

    @property
    def in_features(self) -> int:
        """The wrapped layer's whole input width."""
        return self.original.in_features

    @property
    def out_features(self) -> int:
        """The wrapped layer's whole output width."""
        return self.original.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's weight (code that reads shapes or dtypes sees the base layer)."""
        return self.original.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The wrapped layer's bias."""
        return self.original.bias

    def low_rank_delta(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`concat_i(B_i A_i x) * scaling` for this rank's slice of the output."""
        low = F.linear(self.dropout(hidden_states), self.matrix_A.stacked())  # [..., parts * rank]
        if self.split_dim == 1:
            low = reduce_from_parallel(low, self.tp)  # each rank holds a slice of the input columns
        elif self.split_dim == 0:
            low = copy_to_parallel(low, self.tp)  # each rank's B slice adds its share of A's gradient
        pieces = low.split(self.rank, dim=-1)
        delta = torch.cat([F.linear(piece, self.matrix_B[i]) for i, piece in enumerate(pieces)], dim=-1)
        return delta * self.scaling

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.original(hidden_states) + self.low_rank_delta(hidden_states)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """`concat_i(B_i A_i) * scaling` [local out, local in] in float32."""
        delta = torch.cat(
            [self.matrix_B[i].float() @ self.matrix_A[i].float() for i in range(self.parts)], dim=0
        )  # [local out, local in]
        return delta * self.scaling

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """`W + concat_i(B_i A_i) * scaling`, computed in float32 and returned in the layer's compute dtype.

        For a quantized layer W is its dequantized weight: the function the adapter was trained with.
        """
        merged = _base_weight_float32(self.original) + self.delta_weight()
        return merged.to(_compute_dtype(self.original))

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """The wrapped layer with the low-rank update folded into its weight (a plain layer again).

        A quantized layer comes back as a plain floating-point layer holding dequantized W plus the update.
        """
        merged = self.merged_weight()
        base = dequantized_copy(self.original) if is_quantized(self.original) else self.original
        if not isinstance(base.weight, nn.Parameter) or not base.weight.is_floating_point():
            raise ValueError("cannot merge LoRA into a layer whose weight is not a floating-point parameter")
        base.weight.copy_(merged)
        return base


class LoraMixin(Mixin):
    """Records a model's LoRA configuration and the paths it wrapped; owns no parameters and no hooks."""

    hook_modes: dict[str, str] = {}

    def __init__(self, config: LoraConfig, paths_by_target: Mapping[str, tuple[str, ...]]) -> None:
        super().__init__()
        self.config = config
        self.paths_by_target = dict(paths_by_target)

    @property
    def wrapped_paths(self) -> tuple[str, ...]:
        """Every wrapped module path, target by target."""
        return tuple(path for paths in self.paths_by_target.values() for path in paths)


def _layer_indices(count: int, chosen: tuple[int, ...] | None, what: str) -> list[int]:
    if chosen is None:
        return list(range(count))
    outside = [index for index in chosen if not 0 <= index < count]
    if outside:
        raise ValueError(f"{what} {list(chosen)} has indices {outside} outside [0, {count})")
    return sorted(set(chosen))


def _tower_layer_count(model: nn.Module, tower: str) -> int:
    if tower == "llm":
        return len(model.transformer.layers)
    if mixin_names.IMAGE not in getattr(model, "mixins", {}):
        return 0
    return len(model.mixins[mixin_names.IMAGE].vit_model.transformer.layers)


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        return model.get_submodule(path) is not None
    except AttributeError:
        return False


def lora_target_paths(model: nn.Module, config: LoraConfig) -> dict[str, list[str]]:
    """For each target, the module paths it selects in `model` (in layer order).

    Raises:
        ValueError: a target selects no module (e.g. cross_attention on a model without it).
    """
    chosen: dict[str, list[str]] = {}
    for target in config.targets:
        tower, templates = LORA_TARGETS[target]
        count = _tower_layer_count(model, tower)
        layer_range = config.layer_range if tower == "llm" else config.vision_layer_range
        indices = _layer_indices(
            count, layer_range, "layer_range" if tower == "llm" else "vision_layer_range"
        )
        paths = [
            template.format(i=index)
            for index in indices
            for template in templates
            if _has_module(model, template.format(i=index))
        ]
        if not paths:
            raise ValueError(f"LoRA target {target!r} selects no module in this model (layers {indices})")
        chosen[target] = paths
    return chosen


def _path_seed(seed: int, path: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(path.encode())) % (2**63)


def _swap(model: nn.Module, path: str, replacement: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, replacement)


def add_lora(model: nn.Module, config: LoraConfig) -> tuple[str, ...]:
    """Wrap every linear layer the config targets (plain or quantized); return the wrapped paths.

    A's initial values depend only on (seed, path), never on the tensor-parallel layout, so every rank
    and every parallel size starts from the same adapter.
    """
    if LORA_MIXIN_NAME in model.mixins:
        raise ValueError("this model already has a LoRA adapter; merge or remove it first")
    by_target = {target: tuple(paths) for target, paths in lora_target_paths(model, config).items()}
    mixin = LoraMixin(config, by_target)
    for path in mixin.wrapped_paths:
        layer = model.get_submodule(path)
        if isinstance(layer, LoraLinear):
            raise ValueError(f"{path} is selected by two LoRA targets")
        _swap(model, path, LoraLinear(layer, config, _path_seed(config.seed, path)))
    model.add_mixin(LORA_MIXIN_NAME, mixin)
    return mixin.wrapped_paths


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """Every LoRA-wrapped layer of `model`, by path."""
    return {path: module for path, module in model.named_modules() if isinstance(module, LoraLinear)}


def merge_lora(model: nn.Module) -> tuple[str, ...]:
    """Fold every adapter into its base weight, put the plain layers back and drop the `lora` mixin."""
    merged = lora_layers(model)
    for path, layer in merged.items():
        _swap(model, path, layer.merge())
    if LORA_MIXIN_NAME in model.mixins:
        model.remove_mixin(LORA_MIXIN_NAME)
    return tuple(merged)


def is_lora_parameter(name: str) -> bool:
    """The trainable-parameter filter of a LoRA run: the A and B matrices."""
    return ".matrix_A." in name or ".matrix_B." in name
