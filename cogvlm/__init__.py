"""cogvlm: CogVLM and CogAgent visual-language models."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cogvlm.api import CogVLM, load

__all__ = ["CogVLM", "load"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The API (and torch with it) is imported on first use, so that `cogvlm --help` and the light
    # subcommands start without it.
    if name in __all__:
        from cogvlm import api

        return getattr(api, name)
    raise AttributeError(f"module 'cogvlm' has no attribute {name!r}")
