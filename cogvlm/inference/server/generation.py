"""From a validated request to a prepared generation: prompt, image tensors, sampling and limits."""

from __future__ import annotations

from cogvlm.api import CogVLM
from cogvlm.errors import PromptTooLongError
from cogvlm.inference.generate import GenerationConfig, iterate_generation
from cogvlm.inference.sampling import SamplingConfig
from cogvlm.inference.server.config import ServerConfig
from cogvlm.inference.server.errors import invalid
from cogvlm.inference.server.requests import ChatRequest
from cogvlm.inference.server.scheduler import PreparedJob
from cogvlm.text_processors import build_inference_inputs, build_prompt


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
    """Build the prompt and the lazy token iterator (prefill runs on its first step)."""
    model = session.model
    images = session.process_image(request.image) if request.image is not None else None
    prompt = build_prompt(session.version, request.query, request.history, has_image=images is not None)
    text = build_inference_inputs(session.tokenizer, prompt, model.config.image_length)
    eos = (session.tokenizer.eos_id,)
    generation = GenerationConfig(
        max_length=model.config.llm.max_sequence_length,
        max_new_tokens=request.max_tokens or config.default_max_tokens,
        end_token_ids=eos,
        sampling=sampling_for(request, model.config.llm.vocab_size),
        seed=request.seed,
    )
    try:
        generation.new_token_budget(text.seq_len)
    except PromptTooLongError as error:
        raise invalid(str(error), "messages", "context_length_exceeded") from None
    dtype = model.transformer.word_embeddings.weight.dtype
    steps = iterate_generation(
        model,
        text,
        generation,
        pixel_values=None if images is None else images.pixel_values.to(dtype),
        cross_pixel_values=None
        if images is None or images.cross_pixel_values is None
        else images.cross_pixel_values.to(dtype),
    )
    return PreparedJob((step.token_id for step in steps), text.seq_len, eos, request.stop)
