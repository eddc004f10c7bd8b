"""The small public API: `load` a checkpoint with its processors, then `chat` about an image."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvlm.checkpoints.download import DownloadConfig
from cogvlm.checkpoints.loading import CheckpointInfo, load_model
from cogvlm.checkpoints.resolve import resolve_checkpoint
from cogvlm.checkpoints.tokenizer_fetch import checkpoint_tokenizer
from cogvlm.embedded import EMBEDDED_NAME
from cogvlm.image_processors import DualImageProcessor, ImageProcessor, ImageSource
from cogvlm.inference.batching import GenerationRequest
from cogvlm.inference.generate import GenerationConfig, generate_batch, iterate_batch
from cogvlm.inference.settings import GenerationDefaults, GenerationSettings, build_generation_config
from cogvlm.inference.stopping import StopStrings
from cogvlm.models.builders import model_family
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.config import CogVLMConfig
from cogvlm.nn.quantized import QuantConfig
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel
from cogvlm.text_processors import (
    LlamaTokenizer,
    PromptFormat,
    build_turn_inputs,
    check_style,
    check_version,
    extract_response,
)

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
    """A loaded model with its tokenizer, image processing, prompt format and generation defaults.

    `generation_defaults` default to the reference CLI's (greedy, up to the model's context, stopping at
    the tokenizer's end token); `load` takes them from the checkpoint's `generation_config.json` if any.
    """

    model: VisionLanguageModel
    tokenizer: LlamaTokenizer
    version: str
    source: CheckpointInfo | None = None
    generation_defaults: GenerationDefaults | None = None
    prompt_style: str = "sat"

    def __post_init__(self) -> None:
        if self.generation_defaults is None:
            self.generation_defaults = GenerationDefaults(
                self.config.llm.max_sequence_length, (self.tokenizer.eos_id,)
            )
        check_version(self.version)
        _ = self.prompt_format  # raises now, not at the first turn, for a pair the HF port has no text for

    @property
    def config(self) -> CogVLMConfig:
        """The model's configuration."""
        return self.model.config

    @property
    def prompt_format(self) -> PromptFormat:
        """The prompt version and style; the hf style follows this model family's HF port."""
        family = model_family(self.config.model_class).hf_prompts
        return PromptFormat(self.version, self.prompt_style, family)

    def process_image(self, image: ImageSource) -> ImageInputs:
        """Load and preprocess an image (path, bytes or PIL image) at this model's resolution(s)."""
        config = self.config
        if config.has_cross_vision:
            both = DualImageProcessor(config.vision.image_px, config.cross_vision.image_px)(image)
            return ImageInputs(both.pixel_values, both.cross_pixel_values)
        return ImageInputs(ImageProcessor(config.vision.image_px)(image))

    def generation_config(self, settings: GenerationSettings | None = None, **fields) -> GenerationConfig:
        """The generation config of this model: its defaults, overridden by `settings` and then `fields`.

        `fields` are `GenerationSettings` fields, e.g. `generation_config(max_new_tokens=32, temperature=0)`.
        """
        settings = dataclasses.replace(settings or GenerationSettings(), **fields)
        return build_generation_config(self.generation_defaults, settings)

    def request(
        self, image: ImageSource | ImageInputs | None, query: str, history: History = ()
    ) -> GenerationRequest:
        """The model inputs of one turn: the prompt after `history` and the image's pixels."""
        images = image if isinstance(image, ImageInputs) or image is None else self.process_image(image)
        text = build_turn_inputs(
            self.tokenizer, self.prompt_format, query, history, self.config.image_length, images is not None
        )
        if images is None:
            return GenerationRequest(text)
        dtype = self.model.transformer.word_embeddings.weight.dtype
        cross = images.cross_pixel_values
        return GenerationRequest(
            text, images.pixel_values.to(dtype), None if cross is None else cross.to(dtype)
        )

    def chat(
        self,
        image: ImageSource | ImageInputs | None,
        query: str,
        history: History = (),
        generation: GenerationConfig | None = None,
    ) -> ChatResult:
        """Answer `query` about `image` (None: text only) given earlier (query, response) turns."""
        return self.chat_batch([(image, query, history)], generation)[0]

    def chat_batch(
        self,
        turns: Sequence[tuple[ImageSource | ImageInputs | None, str, History]],
        generation: GenerationConfig | None = None,
    ) -> list[ChatResult]:
        """Answer several (image, query, history) turns in one batch; each equals its own `chat`."""
        generation = generation or self.generation_config()
        requests = [self.request(image, query, history) for image, query, history in turns]
        tokenizer = self.tokenizer if generation.stop_strings else None  # decoding only when needed
        outputs = generate_batch(self.model, requests, generation, tokenizer=tokenizer)
        return [
            self._result(request, output.token_ids, query, history, generation.stop_strings)
            for request, output, (_, query, history) in zip(requests, outputs, turns, strict=True)
        ]

    def stream_chat(
        self,
        image: ImageSource | ImageInputs | None,
        query: str,
        history: History = (),
        generation: GenerationConfig | None = None,
    ) -> ChatStream:
        """Like `chat`, but iterate over the reply's text as it is generated."""
        return ChatStream(self, self.request(image, query, history), query, history, generation)

    def _result(
        self,
        request: GenerationRequest,
        token_ids: list[int],
        query: str,
        history: History,
        stop_strings: Sequence[str] = (),
    ) -> ChatResult:
        decoded = self.tokenizer.decode(request.text.input_ids[0].tolist() + token_ids)
        response = extract_response(decoded, self.version)
        cut = StopStrings(stop_strings).find(response)
        response = response if cut is None else response[:cut].rstrip()
        return ChatResult(response, [*map(tuple, history), (query, response)], token_ids)


class ChatStream:
    """A reply being generated: iterate for its text pieces, then read `result` (what `chat` returns).

    No piece ends inside a UTF-8 character. The pieces are the raw continuation (as the reference's
    `--stream_chat` prints it); `result.response` is the reference's post-processed reply, which for
    chat, chat_old and vqa is that text stripped.
    """

    def __init__(
        self,
        session: CogVLM,
        request: GenerationRequest,
        query: str,
        history: History,
        generation: GenerationConfig | None,
    ) -> None:
        self._session = session
        self._request = request
        self._query = query
        self._history = history
        self._generation = generation or session.generation_config()
        self.result: ChatResult | None = None

    def __iter__(self) -> Iterator[str]:
        token_ids: list[int] = []
        session = self._session
        steps = iterate_batch(session.model, [self._request], self._generation, tokenizer=session.tokenizer)
        for step in steps:
            token_ids.append(int(step.tokens[0]))
            if step.text_pieces[0]:
                yield step.text_pieces[0]
        self.result = session._result(
            self._request, token_ids, self._query, self._history, self._generation.stop_strings
        )


@dataclass(frozen=True)
class ModelSource:
    """Which checkpoint a front-end loads and how: `load`'s settings, shared by every command's model flags.

    `device` "auto" is this rank's device (cuda:LOCAL_RANK when available, else the CPU), given to `load`.
    """

    checkpoint: str = EMBEDDED_NAME
    local_tokenizer: str | None = None
    version: str | None = None
    prompt_style: str = "sat"  # or "hf": the HF port's prompt texts
    dtype: torch.dtype | None = None
    device: str = "auto"
    download: DownloadConfig | None = None
    quant_bits: int | None = None
    quant_group_size: int | None = None

    def load(self, rank_device: torch.device | str = "cpu", tp: TensorParallel = NO_PARALLEL) -> CogVLM:
        """This rank's session: its shard (`tp`) on `device`, or on `rank_device` for "auto"."""
        return load(
            self.checkpoint,
            dtype=self.dtype,
            device=rank_device if self.device == "auto" else self.device,
            local_tokenizer=self.local_tokenizer,
            version=self.version,
            prompt_style=self.prompt_style,
            download=self.download,
            tp=tp,
            quant_bits=self.quant_bits,
            quant_group_size=self.quant_group_size,
        )


def load(
    path: str | Path = EMBEDDED_NAME,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    local_tokenizer: str | None = None,
    version: str | None = None,
    prompt_style: str = "sat",
    download: DownloadConfig | None = None,
    tp: TensorParallel = NO_PARALLEL,
    quant_bits: int | None = None,
    quant_group_size: int | None = None,
) -> CogVLM:
    """Load a SAT or HF checkpoint with its tokenizer and prompt format.

    `path` is a directory, a catalog name (found in or downloaded to $SAT_HOME), a Hugging Face repo id,
    or "embedded" (the default): the small model shipped in the package (`cogvlm.embedded`);
    `download` says where and how (default: from the environment, see `DownloadConfig.from_environment`).
    The prompt format is `version` if given, else the checkpoint's `text_processor_version`, else "chat";
    `prompt_style` "sat" (default) writes it as the SAT code does, "hf" as the HF port's remote code does
    (CogAgent vqa/chat_old keep a literal `<EOI>`, CogVLM vqa keeps the history; see `build_hf_prompt`).
    The tokenizer (`local_tokenizer`, else one beside the checkpoint, else `lmsys/vicuna-7b-v1.5` from
    the HF cache, fetched into it if missing) is found before any weight is downloaded or read.
    `dtype` None means float32 on the CPU and the checkpoint's own dtype elsewhere.
    `quant_bits` (4 or 8) quantizes the parallel linears' weights as they load, so the full-precision model
    never sits on `device` (see `checkpoints.streaming`); a checkpoint saved quantized loads as it is, and
    a different `quant_bits` / `quant_group_size` is refused.
    Under tensor parallelism every rank calls `load` with its `tp` and holds its shard of the weights.
    """
    check_style(prompt_style)
    download = download or DownloadConfig.from_environment()
    tokenizer = checkpoint_tokenizer(path, local_tokenizer, download)  # before any weight is fetched or read
    path = resolve_checkpoint(path, download)
    if dtype is None and torch.device(device).type == "cpu":
        dtype = torch.float32  # half precision is slow on CPUs; a half checkpoint is widened once at load
    quant = None if quant_bits is None else QuantConfig(quant_bits, quant_group_size)
    model, info = load_model(path, dtype=dtype, device=device, tp=tp, quant=quant, progress=True)
    chosen = version or info.config.text_processor_version or DEFAULT_VERSION
    if version and info.config.text_processor_version and version != info.config.text_processor_version:
        logger.warning(
            "using --version %s although %s was trained with %s",
            version,
            path,
            info.config.text_processor_version,
        )
    defaults = GenerationDefaults.from_hf_generation_config(
        info.generation_config(), info.config.llm.max_sequence_length, (tokenizer.eos_id,)
    )
    return CogVLM(model, tokenizer, check_version(chosen), info, defaults, prompt_style)
