"""cogvlm: CogVLM and CogAgent visual-language models."""

__version__ = "0.1.0"
