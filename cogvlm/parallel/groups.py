"""The tensor-parallel value passed to every layer that may be sharded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorParallel:
    """Which slice of a tensor-parallel group this process holds.

    `group` is a `torch.distributed` process group, or None when `size == 1`.
    """

    group: Any = None
    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"tensor parallel size must be >= 1, got {self.size}")
        if not 0 <= self.rank < self.size:
            raise ValueError(f"tensor parallel rank {self.rank} is outside [0, {self.size})")
        if self.size > 1 and self.group is None:
            raise ValueError(f"tensor parallel size {self.size} needs a process group")

    @property
    def is_parallel(self) -> bool:
        """True when the group has more than one rank."""
        return self.size > 1

    def divide(self, value: int, what: str) -> int:
        """Return `value / size`, raising an error naming `what` if it does not divide."""
        if value % self.size:
            raise ValueError(f"{what} = {value} is not divisible by tensor parallel size {self.size}")
        return value // self.size


NO_PARALLEL = TensorParallel()
