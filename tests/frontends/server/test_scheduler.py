"""The server's scheduler in process: jobs share decode steps, and one job's failure or stop string
touches no other job."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from cogvlm.frontends.server.scheduler import Delta, Failed, Finished, PreparedJob, Scheduler
from cogvlm.inference.batching import GenerationRequest
from cogvlm.inference.generate import GenerationConfig
from cogvlm.text_processors import LlamaTokenizer, build_inference_inputs
from tests.frontends.server.helpers import finish_reason
from tests.golden import generations, golden_dir, greedy_cases, prompts, stop_string_in
from tests.golden_models import end_tokens, golden_model, image_inputs, tokenizer_file

MODEL_DIR = golden_dir() / "cogvlm"


def _prepared(case: str, stop: tuple[str, ...] = ()) -> tuple[PreparedJob, dict]:
    model = golden_model(MODEL_DIR)
    prompt, generation = prompts(MODEL_DIR)[case], generations(MODEL_DIR)[case]
    text = build_inference_inputs(_tokenizer(), prompt["prompt"], model.config.image_length)
    request = GenerationRequest(text, image_inputs(MODEL_DIR)["pixel_values"])
    config = GenerationConfig(max_new_tokens=generation["max_new_tokens"], end_token_ids=end_tokens())
    return PreparedJob(request, config, text.seq_len, stop), generation


def _tokenizer() -> LlamaTokenizer:
    return LlamaTokenizer.from_file(tokenizer_file())


async def _collect(job) -> tuple[str, object]:
    pieces = []
    while True:
        event = await job.events.get()
        if isinstance(event, Delta):
            pieces.append(event.text)
        else:
            return "".join(pieces), event


def _run_jobs(
    prepared: list[PreparedJob], max_active: int, compiled: bool = False
) -> tuple[list[tuple[str, object]], dict]:
    scheduler = Scheduler(
        golden_model(MODEL_DIR),
        _tokenizer(),
        max_active=max_active,
        max_queue=16,
        timeout_s=120,
        compiled=compiled,
    )
    if compiled:
        scheduler.warm_up(prepared[0])
    graphs = counters["stats"]["unique_graphs"]

    async def main():
        jobs = [scheduler.submit(p) for p in prepared]  # queued before the worker starts: they join together
        scheduler.start()
        try:
            return await asyncio.gather(*(_collect(job) for job in jobs))
        finally:
            load = scheduler.load
            scheduler.stop()
            main.load = {**load, "new_graphs": counters["stats"]["unique_graphs"] - graphs}

    results = asyncio.run(main())
    return results, main.load


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_jobs_decode_together_and_each_gets_its_reference_answer(compiled):
    cases = greedy_cases(MODEL_DIR)[:4]  # several prompt lengths (and versions) in one batch
    prepared = [_prepared(case) for case in cases]
    results, load = _run_jobs([p for p, _ in prepared], max_active=4, compiled=compiled)
    # Every row whose reference continuation goes on past the prefill's token shares the decode steps.
    assert load["largest_step"] == len([job for job, g in prepared if len(g["new_token_ids"]) > 1])
    assert load["new_graphs"] == 0  # with compiled steps, the warm-up compiled every shape the jobs needed
    for (text, finished), (job, generation) in zip(results, prepared, strict=True):
        assert isinstance(finished, Finished)
        expected = _tokenizer().decode(generation["new_token_ids"], skip_special_tokens=True)
        assert text == expected
        assert (finished.finish_reason, finished.completion_tokens) == (
            finish_reason(generation, generation["max_new_tokens"]),
            len(generation["new_token_ids"]),
        )
        assert finished.prompt_tokens == job.prompt_tokens


def test_a_failing_prefill_fails_its_job_only_and_a_stop_string_frees_its_row():
    good, generation = _prepared(greedy_cases(MODEL_DIR)[0])
    expected = _tokenizer().decode(generation["new_token_ids"], skip_special_tokens=True)
    broken = dataclasses.replace(
        good, request=dataclasses.replace(good.request, pixel_values=torch.zeros(1, 3, 5, 5))
    )
    stop_word = stop_string_in(expected)
    stopped = dataclasses.replace(good, stop=(stop_word,))
    results, load = _run_jobs([broken, stopped, good], max_active=2)
    (_, failure), (stopped_text, stopped_end), (text, finished) = results
    assert isinstance(failure, Failed) and failure.error.status == 500
    assert stopped_text == expected[: expected.index(stop_word)]
    assert stopped_end.finish_reason == "stop"
    assert text == expected
    assert finished.finish_reason == finish_reason(generation, generation["max_new_tokens"])
    assert load["active"] == 0 and load["waiting"] == 0
