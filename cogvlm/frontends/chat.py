"""`cogvlm chat`: the reference CLI's interactive loop about an image, and a one-shot mode for scripts.

Interactive: ask for an image path (empty: text-only chat; `stop`: quit; `--image` alone answers the first
one), then for queries; `clear` starts a new conversation (back to the image prompt), `stop` or Ctrl-C at a
prompt quits. A missing or unreadable image, a prompt over the context length, a query that is not valid
UTF-8, or Ctrl-C during an answer (which stops that answer) prints a message and the session goes on.
"""

from __future__ import annotations

import io
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from cogvlm.api import CogVLM, ImageInputs, ModelSource
from cogvlm.embedded import EMBEDDED_NOTICE, is_embedded
from cogvlm.errors import CogVLMError, ImageError, PromptTooLongError, UserTextError
from cogvlm.frontends.grounding_output import SESSION_FILE_NOTE, GroundingOutput
from cogvlm.inference.generate import GenerationConfig
from cogvlm.inference.settings import GenerationSettings
from cogvlm.launch.distributed import broadcast_reader, init_parallel_runtime, shutdown

TOO_LONG_MESSAGE = "The prompt exceeds the context length limit, please try again."
NOT_UTF8_MESSAGE = "Error: the query is not valid UTF-8 text (undecodable bytes); please type it again."
STOPPED_MESSAGE = "[answer stopped; it is not kept in the conversation]"
URL_TIMEOUT_S = 10
MAX_URL_IMAGE_BYTES = 20 << 20  # what `cogvlm serve` accepts for one image, too
_CHUNK_BYTES = 1 << 16


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

    model: ModelSource = field(default_factory=ModelSource)
    generation: GenerationSettings = field(default_factory=GenerationSettings)  # over the model's defaults
    stream: bool = False
    chinese: bool = False
    image: str | None = None  # with `query`: one-shot; alone: the first image of an interactive session
    query: str | None = None
    grounding_dir: str | None = None  # None: one file per session in the temporary directory
    max_url_image_bytes: int = MAX_URL_IMAGE_BYTES


def has_surrogates(text: str) -> bool:
    """Whether `text` holds lone surrogates (undecodable input bytes kept by `surrogateescape`)."""
    return any("\ud800" <= char <= "\udfff" for char in text)


def read_image(source: str, max_bytes: int = MAX_URL_IMAGE_BYTES) -> bytes | str:
    """A local path as given, or the bytes behind an http(s) URL (10 s timeout, as the reference).

    The body is read in chunks and refused past `max_bytes` (announced or received), so a huge or endless
    response cannot fill the memory.
    """
    if not source.startswith(("http://", "https://")):
        return source
    too_large = f"image {source}: the response is larger than {max_bytes} bytes; refused"
    try:
        with urllib.request.urlopen(source, timeout=URL_TIMEOUT_S) as response:  # noqa: S310 (http(s) only)
            announced = response.headers.get("Content-Length", "")
            if announced.isdigit() and int(announced) > max_bytes:
                raise ImageError(too_large)
            body = bytearray()
            while chunk := response.read(_CHUNK_BYTES):
                body += chunk
                if len(body) > max_bytes:
                    raise ImageError(too_large)
            return bytes(body)
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
        self.grounding = GroundingOutput(config.grounding_dir)

    def say(self, text: str, end: str = "\n") -> None:
        """Print to the loop's output at once."""
        self.output.write(text + end)
        self.output.flush()

    def run(self) -> int:
        """Conversations until `stop`, Ctrl-C at a prompt or end of input; `config.image` starts the first."""
        first = self.config.image
        while True:
            source = first if first is not None else self._ask(self.prompts.image)
            first = None
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
        """A stripped line; None at end of input or Ctrl-C (the session ends cleanly)."""
        while True:
            try:
                return self.read_line(prompt).strip()
            except (EOFError, KeyboardInterrupt):
                self.say("")
                return None
            except UnicodeDecodeError:  # a stdin that was not set to `surrogateescape`
                self.say(NOT_UTF8_MESSAGE)

    def _open_image(self, source: str) -> tuple[ImageInputs, str | bytes] | None:
        if not source:
            return None
        raw = read_image(source, self.config.max_url_image_bytes)
        return self.session.process_image(raw), raw

    def _converse(self, image: tuple[ImageInputs, str | bytes] | None, source: str) -> str:
        history: list[tuple[str, str]] = []
        while True:
            query = self._ask(self.prompts.user)
            if query is None or query == "stop":
                return "stop"
            if query == "clear":
                return "clear"
            if has_surrogates(query):
                self.say(NOT_UTF8_MESSAGE)
                continue
            try:
                response = self.answer(None if image is None else image[0], query, history)
            except PromptTooLongError:
                self.say(TOO_LONG_MESSAGE)
                continue
            except UserTextError as error:
                self.say(f"{error}; ask again without it.")
                continue
            except KeyboardInterrupt:
                self.say("")
                self.say(STOPPED_MESSAGE)
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
        first_session_file = self.grounding.output_dir is None and self.grounding.session_file is None
        path = self.grounding.write(image, response)
        if path is not None:
            self.say(f"Boxes drawn on a copy of the image: {path}")
            if first_session_file:
                self.say(SESSION_FILE_NOTE)

    def answer_once(self, image_source: str | None, query: str) -> int:
        """One-shot mode: print the answer to `query` about `image_source` (empty or None: text only)."""
        if has_surrogates(query):
            raise CogVLMError("--query is not valid UTF-8 text (it has undecodable bytes)")
        raw = read_image(image_source, self.config.max_url_image_bytes) if image_source else None
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


def run_chat(
    config: ChatConfig, output: TextIO | None = None, read_line: Callable[[str], str] = input
) -> int:
    """Load the model, then answer one query (`image`/`query` given) or chat interactively.

    Under torchrun every rank holds its shard of the model; rank 0 reads the input and broadcasts it, and
    only rank 0 prints. `output` defaults to the `sys.stdout` of the call (not of the import).
    """
    output = sys.stdout if output is None else output
    runtime = init_parallel_runtime()
    session = config.model.load(runtime.device, runtime.tp)
    if not runtime.is_first_rank:
        output = io.StringIO()
    elif config.query is None and is_embedded(config.model.checkpoint):
        print(EMBEDDED_NOTICE, file=sys.stderr)
    if read_line is input and hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # undecodable bytes get a message, not a crash
    loop = ChatLoop(session, config, output, broadcast_reader(read_line, runtime), runtime.is_first_rank)
    try:
        if config.query is None:
            return loop.run()
        return loop.answer_once(config.image, config.query)
    except KeyboardInterrupt:  # one-shot mode: no traceback
        output.write("\n")
        return 130
    finally:
        shutdown(runtime)


__all__ = ["ChatConfig", "ChatLoop", "Prompts", "TOO_LONG_MESSAGE", "run_chat"]
