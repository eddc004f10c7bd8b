"""From a validated request to a prepared generation: prompt, image tensors, sampling and limits."""

from __future__ import annotations

from cogvlm.api import CogVLM
from cogvlm.errors import PromptTooLongError
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.errors import invalid
from cogvlm.frontends.server.requests import ChatRequest
from cogvlm.frontends.server.scheduler import PreparedJob
from cogvlm.frontends.text_checks import check_prompt_fits


def sampling_for(request: ChatRequest, vocab_size: int) -> dict:
    """The sampling fields a request sets over the model's defaults, the ones `chat` and `web` start from.

    Neither `temperature` nor `top_p`: the model's sampling (its generation_config.json, else the reference
    CLI's greedy decoding). `temperature` 0: greedy. Else nucleus sampling over the whole vocabulary, with
    OpenAI's 1.0 for whichever of the two is not given.
    """
    fields = {} if request.repetition_penalty is None else {"repetition_penalty": request.repetition_penalty}
    if request.temperature is None and request.top_p is None:
        return fields
    if request.temperature == 0:
        return {**fields, "top_k": 1, "semantics": "standard"}
    # The reference sampler applies top-p only together with top-k, so top-k spans the vocabulary.
    temperature = 1.0 if request.temperature is None else request.temperature
    top_p = 1.0 if request.top_p is None else request.top_p
    return {
        **fields,
        "temperature": temperature,
        "top_k": vocab_size,
        "top_p": top_p,
        "semantics": "standard",
    }


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
    try:
        texts = [request.query, *(text for turn in request.history for text in turn)]
        check_prompt_fits(session.tokenizer, texts, generation.max_length)
        images = session.process_image(request.image) if request.image is not None else None
        inputs = session.request(images, request.query, request.history)
        generation.new_token_budget(inputs.text.seq_len)
    except PromptTooLongError as error:
        raise invalid(str(error), "messages", "context_length_exceeded") from None
    return PreparedJob(inputs, generation, inputs.text.seq_len, request.stop)
