"""Mixins: named modules that own parameters and replace or wrap hook points of a model."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from cogvlm.models.default_hooks import DEFAULT_IMPLEMENTATIONS
from cogvlm.models.hooks import HOOK_PARAMETERS, HookMode, HookPoint

_HOOK_NAMES = tuple(point.value for point in HookPoint)


class Mixin(nn.Module):
    """A named extension of a model. Its parameters appear under `mixins.<name>.` in checkpoints.

    Subclasses list the points they implement in `hook_modes` (name -> "replace" or "wrap") and define a
    method of that name with the point's signature.
    """

    hook_modes: ClassVar[Mapping[str, str]] = {}
    can_init_from_base: ClassVar[bool] = False
    # Parameter-name prefixes (inside the mixin) that `init_from_base` can fill when a checkpoint lacks them.
    base_derived_prefixes: ClassVar[tuple[str, ...]] = ()

    def init_from_base(self, model: nn.Module) -> None:
        """Initialise this mixin's weights from the base model's (only for `can_init_from_base`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be initialised from base weights")


class MixinError(ValueError):
    """A mixin declares its hooks wrongly or conflicts with another mixin."""


def _own_method_names(mixin: Mixin) -> set[str]:
    names: set[str] = set()
    for cls in type(mixin).__mro__:
        if cls in (Mixin, nn.Module, object):
            continue
        names.update(
            name for name, value in vars(cls).items() if callable(value) and not name.startswith("_")
        )
    return names


def check_mixin_hooks(name: str, mixin: Mixin) -> None:
    """Check declarations against signatures; undeclared hook-like methods are errors (catches typos)."""
    owner = f"mixin {name!r} ({type(mixin).__name__})"
    for point_name, mode in mixin.hook_modes.items():
        if point_name not in _HOOK_NAMES:
            raise MixinError(
                f"{owner} declares unknown hook point {point_name!r}; points: {', '.join(_HOOK_NAMES)}"
            )
        if mode not in (HookMode.REPLACE.value, HookMode.WRAP.value):
            raise MixinError(
                f"{owner} declares {point_name!r} with mode {mode!r}, expected 'replace' or 'wrap'"
            )
        method = getattr(mixin, point_name, None)
        if method is None:
            raise MixinError(f"{owner} declares {point_name!r} but defines no such method")
        expected = HOOK_PARAMETERS[HookPoint(point_name)] + (
            ("inner",) if mode == HookMode.WRAP.value else ()
        )
        actual = tuple(inspect.signature(method).parameters)
        if actual != expected:
            raise MixinError(
                f"{owner}.{point_name} has parameters {actual}, expected {expected} for mode {mode!r}"
            )
    for method_name in _own_method_names(mixin) - set(mixin.hook_modes):
        if method_name in _HOOK_NAMES:
            raise MixinError(f"{owner} defines {method_name!r} without declaring it in hook_modes")
        close = difflib.get_close_matches(method_name, _HOOK_NAMES, n=1, cutoff=0.85)
        if close:
            raise MixinError(
                f"{owner} defines {method_name!r}, which looks like a misspelt hook {close[0]!r}"
            )


@dataclass(frozen=True)
class HookTable:
    """The resolved implementation of every hook point, and who provides each."""

    implementations: Mapping[str, Callable]
    sources: Mapping[str, str]

    def __getattr__(self, point_name: str) -> Callable:
        if point_name.startswith("__") or point_name == "implementations":
            raise AttributeError(point_name)  # copy/pickle probe these before the fields exist
        try:
            return self.implementations[point_name]
        except KeyError:
            raise AttributeError(point_name) from None

    def describe(self) -> str:
        """One line per point: `mlp: mlp (VisionExpertMLP, replaces default)`."""
        return "\n".join(f"{point}: {self.sources[point]}" for point in _HOOK_NAMES)


def resolve_hooks(mixins: Mapping[str, Mixin]) -> HookTable:
    """Apply every replacement (at most one per point), then every wrap in insertion order."""
    implementations: dict[str, Callable] = dict(DEFAULT_IMPLEMENTATIONS)
    sources = {point: "default" for point in _HOOK_NAMES}
    replaced_by: dict[str, str] = {}
    for name, mixin in mixins.items():
        for point, mode in mixin.hook_modes.items():
            if mode != HookMode.REPLACE.value:
                continue
            if point in replaced_by:
                raise MixinError(
                    f"hook {point!r} is replaced by both mixin {replaced_by[point]!r} and mixin {name!r}"
                )
            replaced_by[point] = name
            implementations[point] = getattr(mixin, point)
            sources[point] = f"{name} ({type(mixin).__name__}, replaces default)"
    for name, mixin in mixins.items():
        for point, mode in mixin.hook_modes.items():
            if mode == HookMode.WRAP.value:
                implementations[point] = functools.partial(
                    getattr(mixin, point), inner=implementations[point]
                )
                sources[point] = f"{name} ({type(mixin).__name__}, wraps {sources[point]})"
    return HookTable(implementations=implementations, sources=sources)
