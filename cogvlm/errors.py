"""Project errors: each names the file, key, shape or value at fault and what was expected."""


class CogVLMError(Exception):
    """Base class of every error the project raises on bad input."""


class CheckpointError(CogVLMError, ValueError):
    """A checkpoint is missing, malformed, or does not fit the model."""


class ImageError(CogVLMError, ValueError):
    """An image file or buffer cannot be decoded safely."""


class TokenizerError(CogVLMError, ValueError):
    """A tokenizer model cannot be found or loaded."""


class ConfigError(CogVLMError, ValueError):
    """A configuration field has an invalid value."""


class UserTextError(CogVLMError, ValueError):
    """A user's text that cannot become a prompt (a lone surrogate, the reserved image marker)."""


class PromptTooLongError(CogVLMError, ValueError):
    """A prompt does not fit in the context length."""


class DownloadError(CogVLMError):
    """A checkpoint cannot be fetched, or what was fetched fails verification."""


class DatasetError(CogVLMError, ValueError):
    """A training or evaluation data set has malformed records or unusable images."""


class TensorParallelFailure(CogVLMError):
    """A tensor-parallel rank stopped or diverged: the job cannot go on."""
