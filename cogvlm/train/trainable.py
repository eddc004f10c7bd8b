"""Which parameters train, their optimizer groups, and a report of what was chosen."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cogvlm.mixins.lora import LORA_MIXIN_NAME, is_lora_parameter
from cogvlm.train.config import OptimizerConfig, TrainableConfig


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def trainable_filter(config: TrainableConfig, has_lora: bool) -> Callable[[str], bool]:
    """The rule as a function of the parameter name: freezing patterns win over everything else."""

    def is_trainable(name: str) -> bool:
        if _matches(name, config.freeze_patterns):
            return False
        if config.full or (has_lora and is_lora_parameter(name)):
            return True
        return _matches(name, config.train_patterns)

    return is_trainable


@dataclass(frozen=True)
class TrainableReport:
    """Parameter counts: total, trainable, and trainable per group (each LoRA target, then the rest)."""

    total: int
    trainable: int
    groups: dict[str, int]
    lora_modules: dict[str, int]

    def describe(self) -> str:
        """Lines for the log."""
        share = 100.0 * self.trainable / max(1, self.total)
        lines = [f"trainable parameters: {self.trainable:,} of {self.total:,} ({share:.3f}%)"]
        for group, count in self.groups.items():
            modules = self.lora_modules.get(group)
            suffix = f" in {modules} wrapped layers" if modules is not None else ""
            lines.append(f"  {group}: {count:,}{suffix}")
        return "\n".join(lines)


def _lora_target_of(model: nn.Module) -> dict[str, str]:
    if LORA_MIXIN_NAME not in getattr(model, "mixins", {}):
        return {}
    mixin = model.mixins[LORA_MIXIN_NAME]
    return {path: target for target, paths in mixin.paths_by_target.items() for path in paths}


def _group_of(name: str, target_of: dict[str, str]) -> str:
    if is_lora_parameter(name):
        path = name.rsplit(".", 2)[0]  # <path>.matrix_A.<i>
        return f"lora:{target_of.get(path, '?')}"
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "mixins" else parts[0]


def apply_trainable(model: nn.Module, is_trainable: Callable[[str], bool]) -> TrainableReport:
    """Set `requires_grad` on every parameter by the rule and report the result."""
    target_of = _lora_target_of(model)
    total = trainable = 0
    groups: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        chosen = is_trainable(name)
        parameter.requires_grad_(chosen)
        total += parameter.numel()
        if chosen:
            trainable += parameter.numel()
            group = _group_of(name, target_of)
            groups[group] = groups.get(group, 0) + parameter.numel()
    lora_modules: dict[str, int] = {}
    for target in target_of.values():
        lora_modules[f"lora:{target}"] = lora_modules.get(f"lora:{target}", 0) + 1
    if trainable == 0:
        raise ValueError("the trainable-parameter rules select no parameter of this model")
    return TrainableReport(total, trainable, dict(sorted(groups.items())), lora_modules)


def _has_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    # Biases and norm weights are 1-D; the reference exempts them from weight decay.
    return parameter.ndim >= 2 and not name.endswith("bias")


def parameter_groups(model: nn.Module, optimizer: OptimizerConfig, trainable: TrainableConfig) -> list[dict]:
    """AdamW groups of the trainable parameters, split by weight decay and learning-rate scale."""
    groups: dict[tuple[bool, float], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        scale = next((s for pattern, s in trainable.lr_scales if fnmatch.fnmatchcase(name, pattern)), 1.0)
        decays = _has_weight_decay(name, parameter)
        key = (decays, scale)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": optimizer.lr * scale,
                "weight_decay": optimizer.weight_decay if decays else 0.0,
            }
        groups[key]["params"].append(parameter)
        groups[key]["names"].append(name)
    return [groups[key] for key in sorted(groups)]
