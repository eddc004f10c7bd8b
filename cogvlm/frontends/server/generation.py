"""From a validated request to a prepared generation: prompt, image tensors, sampling and limits."""

from __future__ import annotations

from cogvlm.api import CogVLM
from cogvlm.errors import PromptTooLongError
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.errors import invalid
from cogvlm.frontends.server.requests import ChatRequest
from cogvlm.frontends.server.scheduler import PreparedJob


def sampling_for(request: ChatRequest, vocab_size: int) -> dict:
    """The request's sampling settings: temperature 0 is greedy, else nucleus sampling over the vocabulary."""
    if request.temperature == 0:
        return dict(top_k=1, repetition_penalty=request.repetition_penalty, semantics="standard")
    # The reference sampler applies top-p only together with top-k, so top-k spans the vocabulary.
    return dict(
        temperature=request.temperature,
        top_k=vocab_size,
        top_p=request.top_p,
        repetition_penalty=request.repetition_penalty,
        semantics="standard",
    )


def check_prompt_bound(session: CogVLM, request: ChatRequest, max_length: int) -> None:
    """Refuse, before tokenizing, a conversation whose text alone cannot fit the context.

    Encoding costs about a microsecond per character; this check costs nothing for a text short enough
    to fit and a linear normalization pass for a longer one.
    """
    tokenizer = session.tokenizer
    texts = [request.query, *(text for turn in request.history for text in turn)]
    if sum(map(len, texts)) < max_length * tokenizer.max_piece_chars:
        return
    minimum = sum(tokenizer.min_token_count(text) for text in texts)
    if minimum >= max_length:
        raise invalid(
            f"the conversation's text alone needs at least {minimum} tokens and the context length "
            f"limit is {max_length}: the prompt exceeds the context length limit",
            "messages",
            "context_length_exceeded",
        )


def prepare_job(session: CogVLM, config: ServerConfig, request: ChatRequest) -> PreparedJob:
    """Build the prompt, the image tensors and the generation settings (the scheduler runs them)."""
    try:
        generation = session.generation_config(
            max_new_tokens=request.max_tokens or config.default_max_tokens,
            seed=request.seed,
            **sampling_for(request, session.model.config.llm.vocab_size),
        )
    except ValueError as error:  # settings the request validation let through but generation refuses
        raise invalid(f"invalid generation settings: {error}") from None
    check_prompt_bound(session, request, generation.max_length)
    images = session.process_image(request.image) if request.image is not None else None
    inputs = session.request(images, request.query, request.history)
    try:
        generation.new_token_budget(inputs.text.seq_len)
    except PromptTooLongError as error:
        raise invalid(str(error), "messages", "context_length_exceeded") from None
    return PreparedJob(inputs, generation, inputs.text.seq_len, request.stop)
