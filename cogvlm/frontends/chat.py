"""`cogvlm chat`: the reference CLI's interactive loop about an image, and a one-shot mode for scripts.

Interactive: ask for an image path (empty: text-only chat; `stop`: quit), then for queries; `clear` starts
a new conversation (back to the image prompt), `stop` quits. A missing or unreadable image, or a prompt
over the context length, prints a message and the session goes on.
"""

from __future__ import annotations

import io
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import torch

from cogvlm.api import CogVLM, ImageInputs, load
from cogvlm.checkpoints.download import DownloadConfig
from cogvlm.errors import ImageError, PromptTooLongError
from cogvlm.frontends.grounding_output import draw_grounding
from cogvlm.inference.generate import GenerationConfig
from cogvlm.inference.settings import GenerationSettings
from cogvlm.launch.distributed import broadcast_reader, init_parallel_runtime, shutdown

TOO_LONG_MESSAGE = "The prompt exceeds the context length limit, please try again."
URL_TIMEOUT_S = 10


@dataclass(frozen=True)
class Prompts:
    """What the loop prints (English, or Chinese with `--chinese`, as the reference does)."""

    image: str = "Please enter the image path or URL (press Enter for text-only chat): "
    user: str = "User: "
    model: str = "Model: "


CHINESE_PROMPTS = Prompts(image="请输入图像路径或URL（回车进入纯文本对话）：", user="用户：", model="模型：")


@dataclass(frozen=True)
class ChatConfig:
    """Everything `cogvlm chat` needs: the checkpoint, how to run it, how to sample, and the mode."""

    checkpoint: str
    local_tokenizer: str | None = None
    version: str | None = None
    prompt_style: str = "sat"  # or "hf": the HF port's prompt texts
    dtype: torch.dtype | None = None
    device: str = "auto"  # cuda:LOCAL_RANK when available, else cpu
    download: DownloadConfig | None = None
    quant_bits: int | None = None
    quant_group_size: int | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)  # over the model's defaults
    stream: bool = False
    chinese: bool = False
    image: str | None = None  # one-shot mode: with `query`
    query: str | None = None
    grounding_dir: str | None = None

    def __post_init__(self) -> None:
        if self.image is not None and self.query is None:
            raise ValueError("--image needs --query (without both, chat is interactive)")


def read_image(source: str) -> bytes | str:
    """A local path as given, or the bytes behind an http(s) URL (10 s timeout, as the reference)."""
    if not source.startswith(("http://", "https://")):
        return source
    try:
        with urllib.request.urlopen(source, timeout=URL_TIMEOUT_S) as response:  # noqa: S310 (http(s) only)
            return response.read()
    except OSError as error:
        raise ImageError(f"image {source}: cannot download it ({error})") from None


class ChatLoop:
    """The interactive conversation: one image (or none) per conversation, history re-encoded each turn."""

    def __init__(
        self,
        session: CogVLM,
        config: ChatConfig,
        output: TextIO,
        read_line: Callable[[str], str],
        is_first_rank: bool = True,
    ):
        self.is_first_rank = is_first_rank
        self.session = session
        self.config = config
        self.generation: GenerationConfig = session.generation_config(config.generation)
        self.output = output
        self.read_line = read_line
        self.prompts = CHINESE_PROMPTS if config.chinese else Prompts()

    def say(self, text: str, end: str = "\n") -> None:
        """Print to the loop's output at once."""
        self.output.write(text + end)
        self.output.flush()

    def run(self) -> int:
        """Conversations until `stop` or end of input."""
        while True:
            source = self._ask(self.prompts.image)
            if source is None or source == "stop":
                return 0
            try:
                image = self._open_image(source)
            except (ImageError, FileNotFoundError) as error:
                self.say(f"Error: {error}")
                continue
            if self._converse(image, source) == "stop":
                return 0

    def _ask(self, prompt: str) -> str | None:
        try:
            return self.read_line(prompt).strip()
        except EOFError:
            self.say("")
            return None

    def _open_image(self, source: str) -> tuple[ImageInputs, str | bytes] | None:
        if not source:
            return None
        raw = read_image(source)
        return self.session.process_image(raw), raw

    def _converse(self, image: tuple[ImageInputs, str | bytes] | None, source: str) -> str:
        history: list[tuple[str, str]] = []
        while True:
            query = self._ask(self.prompts.user)
            if query is None or query == "stop":
                return "stop"
            if query == "clear":
                return "clear"
            try:
                response = self.answer(None if image is None else image[0], query, history)
            except PromptTooLongError:
                self.say(TOO_LONG_MESSAGE)
                continue
            history.append((query, response))
            if image is not None:
                self.show_grounding(image[1], response)

    def answer(self, image: ImageInputs | None, query: str, history) -> str:
        """Print the reply (streamed or whole) and return it."""
        generation = self.generation
        if not self.config.stream:
            response = self.session.chat(image, query, history, generation).response
            self.say(self.prompts.model + response)
            return response
        stream = self.session.stream_chat(image, query, history, generation)
        self.say(self.prompts.model, end="")
        for piece in stream:
            self.say(piece, end="")
        self.say("")
        return stream.result.response

    def show_grounding(self, image: str | bytes, response: str) -> None:
        """Save and name a copy of the image with the reply's boxes, if it has any (first rank only)."""
        if not self.is_first_rank:
            return
        path = draw_grounding(image, response, self.config.grounding_dir)
        if path is not None:
            self.say(f"Boxes drawn on a copy of the image: {path}")

    def answer_once(self, image_source: str | None, query: str) -> int:
        """One-shot mode: print the answer to `query` about `image_source` (empty or None: text only)."""
        raw = read_image(image_source) if image_source else None
        image = None if raw is None else self.session.process_image(raw)
        if self.config.stream:
            stream = self.session.stream_chat(image, query, (), self.generation)
            for piece in stream:
                self.say(piece, end="")
            self.say("")
            response = stream.result.response
        else:
            response = self.session.chat(image, query, (), self.generation).response
            self.say(response)
        if raw is not None:
            self.show_grounding(raw, response)
        return 0


def run_chat(config: ChatConfig, output: TextIO = sys.stdout, read_line: Callable[[str], str] = input) -> int:
    """Load the model, then answer one query (`image`/`query` given) or chat interactively.

    Under torchrun every rank holds its shard of the model; rank 0 reads the input and broadcasts it, and
    only rank 0 prints.
    """
    runtime = init_parallel_runtime()
    session = load(
        config.checkpoint,
        dtype=config.dtype,
        device=runtime.device if config.device == "auto" else config.device,
        local_tokenizer=config.local_tokenizer,
        version=config.version,
        prompt_style=config.prompt_style,
        download=config.download,
        tp=runtime.tp,
        quant_bits=config.quant_bits,
        quant_group_size=config.quant_group_size,
    )
    if not runtime.is_first_rank:
        output = io.StringIO()
    loop = ChatLoop(session, config, output, broadcast_reader(read_line, runtime), runtime.is_first_rank)
    try:
        if config.query is None:
            return loop.run()
        return loop.answer_once(config.image, config.query)
    finally:
        shutdown(runtime)


__all__ = ["ChatConfig", "ChatLoop", "Prompts", "TOO_LONG_MESSAGE", "run_chat"]
