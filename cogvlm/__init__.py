"""cogvlm: CogVLM and CogAgent visual-language models."""

from cogvlm.api import CogVLM, load

__all__ = ["CogVLM", "load"]
__version__ = "0.1.0"
