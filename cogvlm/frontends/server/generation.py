"""From a validated request to a prepared generation: prompt, image tensors, sampling and limits."""

from __future__ import annotations

from cogvlm.api import CogVLM
from cogvlm.errors import PromptTooLongError
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.errors import invalid
from cogvlm.frontends.server.requests import ChatRequest
from cogvlm.frontends.server.scheduler import PreparedJob
from cogvlm.inference.generate import GenerationConfig
from cogvlm.inference.sampling import SamplingConfig


def sampling_for(request: ChatRequest, vocab_size: int) -> SamplingConfig:
    """Temperature 0 is greedy; otherwise nucleus sampling over the whole vocabulary."""
    if request.temperature == 0:
        return SamplingConfig(top_k=1, repetition_penalty=request.repetition_penalty)
    # The reference sampler applies top-p only together with top-k, so top-k spans the vocabulary.
    return SamplingConfig(
        temperature=request.temperature,
        top_k=vocab_size,
        top_p=request.top_p,
        repetition_penalty=request.repetition_penalty,
    )


def prepare_job(session: CogVLM, config: ServerConfig, request: ChatRequest) -> PreparedJob:
    """Build the prompt, the image tensors and the generation settings (the scheduler runs them)."""
    model = session.model
    images = session.process_image(request.image) if request.image is not None else None
    inputs = session.request(images, request.query, request.history)
    eos = (session.tokenizer.eos_id,)
    generation = GenerationConfig(
        max_length=model.config.llm.max_sequence_length,
        max_new_tokens=request.max_tokens or config.default_max_tokens,
        end_token_ids=eos,
        sampling=sampling_for(request, model.config.llm.vocab_size),
        seed=request.seed,
    )
    try:
        generation.new_token_budget(inputs.text.seq_len)
    except PromptTooLongError as error:
        raise invalid(str(error), "messages", "context_length_exceeded") from None
    return PreparedJob(inputs, generation, inputs.text.seq_len, request.stop)
