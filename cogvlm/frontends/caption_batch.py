"""Answering a stream of caption inputs as rows of one continuous decode batch.

An input joins as soon as a row is free and leaves when its answer ends, so every step is one forward
pass for up to `batch_size` answers. Each answer is what `CogVLM.chat` gives for the same image and
query: the same prompt, settings, tokens and post-processing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from cogvlm.api import CogVLM
from cogvlm.errors import ImageError, PromptTooLongError
from cogvlm.frontends.caption_inputs import CaptionInput
from cogvlm.frontends.caption_records import answer_record, error_record
from cogvlm.inference.batching import GenerationRequest
from cogvlm.inference.decode_batch import DecodeBatch, RowToken
from cogvlm.inference.generate import GenerationConfig
from cogvlm.inference.stopping import StopStrings
from cogvlm.inference.streaming import TextStream
from cogvlm.text_processors import extract_response

# What fails one input (its record gets an "error") rather than the run.
INPUT_ERRORS = (ImageError, PromptTooLongError)


@dataclass
class _Answer:
    """An input being answered: its prompt, its tokens so far and, with stop strings, its text."""

    item: CaptionInput
    request: GenerationRequest
    text: TextStream | None
    token_ids: list[int] = field(default_factory=list)


class Captioner:
    """Runs inputs through a `DecodeBatch` of `batch_size` rows; hands each finished record to `write`."""

    def __init__(
        self,
        session: CogVLM,
        generation: GenerationConfig,
        *,
        batch_size: int,
        compiled: bool = False,
    ) -> None:
        self.session = session
        self.stop_strings = generation.stop_strings
        # The batch leaves stop strings to its caller; they are matched here on each row's text.
        self.generation = dataclasses.replace(generation, stop_strings=(), decode_step="eager")
        max_length = min(generation.max_length, session.config.llm.max_sequence_length)
        self.batch = DecodeBatch(session.model, max_rows=batch_size, max_length=max_length, compiled=compiled)
        self._active: dict[int, _Answer] = {}

    def run(self, inputs: Iterable[CaptionInput], write: Callable[[dict], None]) -> None:
        """Answer every input, writing one record per input as soon as it is done."""
        pending = iter(inputs)
        waiting: _Answer | None = None
        while True:
            waiting = self._admit(pending, waiting, write)
            if not self._active:
                if waiting is None:
                    return
                continue  # the waiting input joins the now empty batch
            for result in self.batch.step():
                self._advance(result, write)

    def _admit(
        self, pending: Iterator[CaptionInput], waiting: _Answer | None, write: Callable[[dict], None]
    ) -> _Answer | None:
        """Start inputs while rows are free; returns the prepared input that must wait, if any."""
        while self.batch.size < self.batch.max_rows:
            answer = waiting or self._prepare(pending, write)
            waiting = None
            if answer is None:
                return None
            if not self.batch.can_join(answer.request):
                return answer  # CogAgent rows with and without a cross image take turns
            try:
                first = self.batch.join(answer.request, self.generation)
            except PromptTooLongError as error:
                write(error_record(answer.item, error))
                continue
            self._active[first.row_id] = answer
            self._advance(first, write)
        return waiting

    def _prepare(self, pending: Iterator[CaptionInput], write: Callable[[dict], None]) -> _Answer | None:
        """The next input whose image reads, with its prompt and pixels; unreadable ones become errors."""
        for item in pending:
            try:
                request = self.session.request(self.session.process_image(item.path), item.query)
            except INPUT_ERRORS as error:
                write(error_record(item, error))
                continue
            text = TextStream(self.session.tokenizer, self.stop_strings) if self.stop_strings else None
            return _Answer(item, request, text)
        return None

    def _advance(self, result: RowToken, write: Callable[[dict], None]) -> None:
        """Add a row's new token; write the record when the row ends (end token, budget or stop string)."""
        answer = self._active[result.row_id]
        answer.token_ids.append(result.token_id)
        finished = result.finish_reason is not None
        if answer.text is not None:
            answer.text.push(result.token_id)
            if answer.text.hit_stop_string and not finished:
                self.batch.leave(result.row_id)  # the batch does not know the row ended
                finished = True
        if finished:
            del self._active[result.row_id]
            write(answer_record(answer.item, self.response(answer)))

    def response(self, answer: _Answer) -> str:
        """The reply as `CogVLM.chat` post-processes it: cut out of the decoded prompt and answer."""
        prompt_ids = answer.request.text.input_ids[0].tolist()
        decoded = self.session.tokenizer.decode(prompt_ids + answer.token_ids)
        response = extract_response(decoded, self.session.version)
        cut = StopStrings(self.stop_strings).find(response)
        return response if cut is None else response[:cut].rstrip()
