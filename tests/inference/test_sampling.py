"""Every sampling option, in the reference's (SAT) semantics and in the standard ones."""

from __future__ import annotations

import pytest
import torch

from cogvlm.inference.sampling import (
    FILTER_VALUE,
    SamplingConfig,
    apply_repetition_penalty,
    filter_logits,
    sample,
    sample_reference,
)

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
DRAWS = 400


def _draws(config: SamplingConfig, logits=LOGITS, seen=None, seed=0) -> set[int]:
    generator = torch.Generator().manual_seed(seed)
    return {int(sample(logits, seen, config, [generator])) for _ in range(DRAWS)}


@pytest.mark.parametrize("semantics", ["reference", "standard"])
def test_top_k_one_and_temperature_zero_are_the_arg_max(semantics):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    for config in (
        SamplingConfig(top_k=1, semantics=semantics),
        SamplingConfig(0.0, 0, 1.0, semantics=semantics),
    ):
        assert torch.equal(sample(logits, None, config), logits.argmax(-1))


@pytest.mark.parametrize("semantics", ["reference", "standard"])
def test_top_k_samples_only_the_k_most_likely_tokens(semantics):
    config = SamplingConfig(temperature=5.0, top_k=2, top_p=1.0, semantics=semantics)
    assert _draws(config) == {0, 1}


def test_reference_top_p_applies_only_together_with_top_k():
    # With top_k = 0 SAT skips both filters: high temperature then reaches every token.
    assert _draws(SamplingConfig(temperature=5.0, top_k=0, top_p=0.1, semantics="reference")) == set(range(5))
    # With top_k > 0 the nucleus runs inside it: top_p tiny keeps only the best token.
    assert _draws(SamplingConfig(temperature=5.0, top_k=4, top_p=0.01, semantics="reference")) == {0}


def test_standard_top_p_applies_without_top_k():
    assert _draws(SamplingConfig(temperature=1.0, top_k=0, top_p=0.01, semantics="standard")) == {0}
    # softmax(LOGITS): 0.61, 0.22, 0.14, ...: the nucleus of 0.7 holds the first two tokens.
    assert _draws(SamplingConfig(temperature=1.0, top_k=0, top_p=0.7, semantics="standard")) == {0, 1}


def test_filtered_logits_are_minus_65504_in_reference_and_minus_inf_in_standard():
    reference = filter_logits(LOGITS, None, SamplingConfig(1.0, 2, 1.0, semantics="reference"))
    standard = filter_logits(LOGITS, None, SamplingConfig(1.0, 2, 1.0, semantics="standard"))
    assert reference[0, 2:].tolist() == [FILTER_VALUE] * 3
    assert torch.isneginf(standard[0, 2:]).all()
    assert reference[0, :2].tolist() == LOGITS[0, :2].tolist()


def test_temperature_divides_the_logits():
    filtered = filter_logits(LOGITS, None, SamplingConfig(temperature=0.5, top_k=0, top_p=1.0))
    torch.testing.assert_close(filtered, LOGITS / 0.5, rtol=0, atol=0)  # one exact division


def test_higher_temperature_spreads_the_draws():
    cold = _draws(SamplingConfig(temperature=0.05, top_k=0, top_p=1.0, semantics="standard"))
    hot = _draws(SamplingConfig(temperature=10.0, top_k=0, top_p=1.0, semantics="standard"))
    assert cold == {0}
    assert hot == set(range(5))


def test_reference_penalty_divides_seen_logits_even_negative_ones():
    seen = torch.tensor([[True, False, False, True, False]])
    penalised = apply_repetition_penalty(
        LOGITS, seen, SamplingConfig(repetition_penalty=2.0, semantics="reference")
    )
    assert penalised.tolist() == [[1.0, 1.0, 0.5, -0.5, -3.0]]  # -1 / 2 = -0.5: SAT raises it


def test_standard_penalty_makes_every_seen_token_less_likely():
    seen = torch.tensor([[True, False, False, True, False]])
    penalised = apply_repetition_penalty(LOGITS, seen, SamplingConfig(repetition_penalty=2.0))
    assert penalised.tolist() == [[1.0, 1.0, 0.5, -2.0, -3.0]]


def test_penalty_can_change_the_greedy_choice():
    seen = torch.tensor([[True, False, False, False, False]])
    config = SamplingConfig(top_k=1, repetition_penalty=4.0)
    assert int(sample(LOGITS, seen, config)) == 1
    assert int(sample(LOGITS, None, config)) == 0


def test_sample_reference_takes_generated_ids():
    generated = torch.tensor([[0, 0]])
    config = SamplingConfig(top_k=1, repetition_penalty=4.0, semantics="reference")
    assert int(sample_reference(LOGITS, generated, config)) == 1


def test_a_seed_reproduces_the_draws_and_rows_draw_independently():
    config = SamplingConfig(temperature=3.0, top_k=0, top_p=1.0, semantics="standard")
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(3))

    def run(seed: int, rows: int) -> list[list[int]]:
        generators = [torch.Generator().manual_seed(seed) for _ in range(rows)]
        return [sample(logits.expand(rows, -1), None, config, generators).tolist() for _ in range(20)]

    alone = [row[0] for row in run(7, 1)]
    batched = run(7, 3)
    assert all(row == [token] * 3 for row, token in zip(batched, alone, strict=True))
    assert alone != [row[0] for row in run(8, 1)]


def test_the_reference_draw_equals_torch_multinomial_under_the_same_seed():
    # Reproducing a sampled reference run: SAT draws with torch.multinomial(probs, 1) from the global RNG.
    config = SamplingConfig(temperature=2.0, top_k=3, top_p=0.9, semantics="reference")
    probs = filter_logits(LOGITS, None, config).softmax(-1)
    torch.manual_seed(11)
    expected = torch.multinomial(probs, 1).item()
    torch.manual_seed(11)
    assert int(sample(LOGITS, None, config)) == expected


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -1.0, "temperature must be >= 0"),
        ("top_k", -1, "top_k must be >= 0"),
        ("top_p", 1.5, r"top_p must be in \[0, 1\]"),
        ("repetition_penalty", 0.0, "repetition_penalty must be > 0"),
        ("semantics", "hf", "semantics must be one of"),
    ],
)
def test_invalid_sampling_values_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**{field: value})
