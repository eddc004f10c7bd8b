"""Shard rules as data, and the pure shard / unshard pair that every split and merge uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ShardRule:
    """How one tensor is split across tensor-parallel ranks.

    `dim` is the split dimension (None: replicated). `parts` > 1 marks a fused weight
    (QKV = 3, KV = 2) whose blocks along `dim` are each split on their own, so rank r holds
    `[q_r; k_r; v_r]`. The blocks are equal unless `part_weights` gives their relative sizes (grouped-query
    attention: QKV with 32 query and 8 key/value heads is `(4, 1, 1)`); relative sizes hold for the whole
    tensor and for every rank's piece alike.
    """

    dim: int | None
    parts: int = 1
    part_weights: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.parts < 1:
            raise ValueError(f"ShardRule.parts must be >= 1, got {self.parts}")
        weights = self.part_weights
        if weights is not None and (len(weights) != self.parts or min(weights) < 1):
            raise ValueError(f"ShardRule.part_weights {weights} must be {self.parts} positive ints")

    @property
    def is_replicated(self) -> bool:
        """True when every rank holds the whole tensor."""
        return self.dim is None

    def part_sizes(self, length: int) -> list[int]:
        """The lengths of the fused blocks of a tensor whose `dim` has `length` entries."""
        weights = self.part_weights or (1,) * self.parts
        unit, remainder = divmod(length, sum(weights))
        if remainder:
            raise ValueError(f"length {length} does not split into parts of relative sizes {weights}")
        return [unit * weight for weight in weights]

    def splits_evenly(self, length: int, size: int) -> bool:
        """True when every fused block of `length` entries splits into `size` equal pieces."""
        try:
            return all(part % size == 0 for part in self.part_sizes(length))
        except ValueError:
            return False


REPLICATED = ShardRule(dim=None)


def shard_tensor(tensor: torch.Tensor, rule: ShardRule, rank: int, size: int) -> torch.Tensor:
    """Return rank `rank`'s piece of `tensor` under `rule` for `size` ranks."""
    if rule.is_replicated or size == 1:
        return tensor
    length = tensor.shape[rule.dim]
    if not rule.splits_evenly(length, size):
        raise ValueError(
            f"dimension {rule.dim} of shape {tuple(tensor.shape)} does not split into "
            f"{rule.parts} part(s) x {size} ranks"
        )
    blocks = tensor.split(rule.part_sizes(length), dim=rule.dim)
    return torch.cat([block.chunk(size, dim=rule.dim)[rank] for block in blocks], dim=rule.dim).clone()


def unshard_tensors(pieces: list[torch.Tensor], rule: ShardRule) -> torch.Tensor:
    """Rebuild the whole tensor from every rank's piece (inverse of `shard_tensor`)."""
    if rule.is_replicated or len(pieces) == 1:
        return pieces[0]
    per_rank_blocks = [piece.split(rule.part_sizes(piece.shape[rule.dim]), dim=rule.dim) for piece in pieces]
    blocks = [
        torch.cat([blocks[part] for blocks in per_rank_blocks], dim=rule.dim) for part in range(rule.parts)
    ]
    return torch.cat(blocks, dim=rule.dim)


def collect_shard_rules(model: torch.nn.Module) -> dict[str, ShardRule]:
    """Every state-dict key of `model` with its shard rule (replicated unless a layer declares one)."""
    rules: dict[str, ShardRule] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        declared = getattr(module, "shard_rules", {})
        for name, _ in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            key = f"{prefix}.{name}" if prefix else name
            rules[key] = declared.get(name, REPLICATED)
    return rules


def shard_state_dict(
    state_dict: dict[str, torch.Tensor], rules: dict[str, ShardRule], rank: int, size: int
) -> dict[str, torch.Tensor]:
    """Rank `rank`'s state dict; keys without a rule are replicated."""
    return {
        key: shard_tensor(value, rules.get(key, REPLICATED), rank, size) for key, value in state_dict.items()
    }


def unshard_state_dicts(
    rank_state_dicts: list[dict[str, torch.Tensor]], rules: dict[str, ShardRule]
) -> dict[str, torch.Tensor]:
    """The whole state dict from every rank's piece; keys without a rule are taken from rank 0."""
    return {
        key: unshard_tensors([state[key] for state in rank_state_dicts], rules.get(key, REPLICATED))
        for key in rank_state_dicts[0]
    }
