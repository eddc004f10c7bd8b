"""The small public API: `load` a checkpoint with its processors, then `chat` about an image."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvlm.checkpoints.download import DownloadConfig
from cogvlm.checkpoints.loading import CheckpointInfo, load_model
from cogvlm.checkpoints.resolve import resolve_checkpoint
from cogvlm.image_processors import DualImageProcessor, ImageProcessor, ImageSource
from cogvlm.inference.generate import GenerationConfig, generate
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.config import CogVLMConfig
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel
from cogvlm.text_processors import (
    LlamaTokenizer,
    build_inference_inputs,
    build_prompt,
    check_version,
    extract_response,
    load_tokenizer,
)
from cogvlm.text_processors.tokenizer import TOKENIZER_FILE

logger = logging.getLogger(__name__)
DEFAULT_VERSION = "chat"
History = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class ImageInputs:
    """Pixel values for one image: the EVA input and, for CogAgent, the high-resolution cross input."""

    pixel_values: torch.Tensor  # [1, 3, px, px]
    cross_pixel_values: torch.Tensor | None = None


@dataclass(frozen=True)
class ChatResult:
    """The reply, the history with this turn appended, and the generated token ids."""

    response: str
    history: list[tuple[str, str]]
    token_ids: list[int]


@dataclass
class CogVLM:
    """A loaded model with its tokenizer, image processing and prompt format."""

    model: VisionLanguageModel
    tokenizer: LlamaTokenizer
    version: str
    source: CheckpointInfo | None = None

    @property
    def config(self) -> CogVLMConfig:
        """The model's configuration."""
        return self.model.config

    def process_image(self, image: ImageSource) -> ImageInputs:
        """Load and preprocess an image (path, bytes or PIL image) at this model's resolution(s)."""
        config = self.config
        if config.is_cogagent:
            both = DualImageProcessor(config.vision.image_px, config.cross_vision.image_px)(image)
            return ImageInputs(both.pixel_values, both.cross_pixel_values)
        return ImageInputs(ImageProcessor(config.vision.image_px)(image))

    def chat(
        self,
        image: ImageSource | ImageInputs | None,
        query: str,
        history: History = (),
        generation: GenerationConfig | None = None,
    ) -> ChatResult:
        """Answer `query` about `image` (None: text only) given earlier (query, response) turns."""
        generation = generation or GenerationConfig(end_token_ids=(self.tokenizer.eos_id,))
        images = image if isinstance(image, ImageInputs) or image is None else self.process_image(image)
        prompt = build_prompt(self.version, query, history, has_image=images is not None)
        text = build_inference_inputs(self.tokenizer, prompt, self.config.image_length)
        dtype = self.model.transformer.word_embeddings.weight.dtype
        output = generate(
            self.model,
            text,
            generation,
            pixel_values=None if images is None else images.pixel_values.to(dtype),
            cross_pixel_values=None
            if images is None or images.cross_pixel_values is None
            else images.cross_pixel_values.to(dtype),
        )
        decoded = self.tokenizer.decode(text.input_ids[0].tolist() + output.token_ids)
        response = extract_response(decoded, self.version)
        return ChatResult(response, [*map(tuple, history), (query, response)], output.token_ids)


def find_tokenizer(checkpoint: Path, local_tokenizer: str | None) -> LlamaTokenizer:
    """An explicit tokenizer, else one stored beside the checkpoint, else vicuna-7b-v1.5 from the HF cache."""
    if local_tokenizer is None and (checkpoint / TOKENIZER_FILE).is_file():
        local_tokenizer = str(checkpoint / TOKENIZER_FILE)
    return load_tokenizer(local_tokenizer)


def load(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    local_tokenizer: str | None = None,
    version: str | None = None,
    download: DownloadConfig | None = None,
    tp: TensorParallel = NO_PARALLEL,
) -> CogVLM:
    """Load a SAT or HF checkpoint with its tokenizer and prompt format.

    `path` is a directory, a catalog name (found in or downloaded to $SAT_HOME) or a Hugging Face repo id;
    `download` says where and how (default: from the environment, see `DownloadConfig.from_environment`).
    The prompt format is `version` if given, else the checkpoint's `text_processor_version`, else "chat".
    Under tensor parallelism every rank calls `load` with its `tp` and holds its shard of the weights.
    """
    path = resolve_checkpoint(path, download)
    model, info = load_model(path, dtype=dtype, device=device, tp=tp)
    chosen = version or info.config.text_processor_version or DEFAULT_VERSION
    if version and info.config.text_processor_version and version != info.config.text_processor_version:
        logger.warning(
            "using --version %s although %s was trained with %s",
            version,
            path,
            info.config.text_processor_version,
        )
    return CogVLM(model, find_tokenizer(path, local_tokenizer), check_version(chosen), info)
