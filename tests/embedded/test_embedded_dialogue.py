"""The shipped model's honest reply to what it cannot answer, and its answers after earlier turns.

Scored on a set generated here (`write_dialogue_set`: off-topic questions from the pool training never
used, and scene questions asked after one to three earlier turns) about images of a seed used nowhere else
(see test_embedded_model.py); the thresholds sit a margin below the model card's dialogue scores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cogvlm.api import load
from cogvlm.embedded import example_image
from cogvlm.train.synthetic import EMBEDDED_SCENE, TASKS_FILE, DatasetConfig, write_dataset
from cogvlm.train.synthetic_dialogue import UNANSWERABLE, UNANSWERABLE_REPLY, write_dialogue_set
from cogvlm.train.synthetic_eval import is_correct, session_answerer

DIALOGUE_SEED = 20261125
DIALOGUE_IMAGES = 120
OFF_TOPIC, MULTI_TURN = 150, 240
HONEST_REPLY_MIN = 0.85  # share of off-topic questions answered with exactly the honest reply
CHINESE_REPLY_MIN = 0.85  # the same, for those written in Chinese or Japanese
LEARNT_TASKS = ("color", "count", "shape")  # follow-ups are scored on what the model answers well alone
FOLLOW_UP_MIN = 0.60  # share of follow-up questions of those tasks answered right
FOLLOW_UP_VS_ALONE = 0.85  # follow-ups right at least this share as often as the same questions asked alone
_CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def session():
    return load()


def dialogue_answers(session, root: Path) -> list[tuple[dict, str, str]]:
    """(record, answer after its history, answer asked alone) for a dialogue set generated under `root`."""
    write_dataset(
        root / "images", DatasetConfig(num_images=DIALOGUE_IMAGES, seed=DIALOGUE_SEED, scene=EMBEDDED_SCENE)
    )
    data = root / "dialogue"
    write_dialogue_set(root / "images", data, OFF_TOPIC, MULTI_TURN, seed=DIALOGUE_SEED)
    records = [json.loads(line) for line in (data / TASKS_FILE).read_text().splitlines()]
    answer = session_answerer(session)
    in_turn = answer([(data / r["image"], r["question"], r["history"]) for r in records])
    alone = answer([(data / r["image"], r["question"], []) for r in records])
    return list(zip(records, in_turn, alone, strict=True))


@pytest.fixture(scope="module")
def answered(session, tmp_path_factory):
    return dialogue_answers(session, tmp_path_factory.mktemp("dialogue"))


def _honest_share(answered, keep) -> tuple[float, list[tuple[str, str]]]:
    off_topic = [(r["question"], a) for r, a, _ in answered if r["task"] == UNANSWERABLE and keep(r)]
    wrong = [(question, a) for question, a in off_topic if a != UNANSWERABLE_REPLY]
    return 1 - len(wrong) / len(off_topic), wrong


def test_off_topic_questions_get_the_honest_reply(answered):
    share, wrong = _honest_share(answered, lambda record: True)
    assert share >= HONEST_REPLY_MIN, f"{share:.3f}: {wrong}"
    assert sum(bool(r["history"]) for r, _, _ in answered if r["task"] == UNANSWERABLE) >= 40  # also late


def test_questions_in_chinese_get_the_honest_reply(answered, session):
    share, wrong = _honest_share(answered, lambda record: bool(_CJK.search(record["question"])))
    assert share >= CHINESE_REPLY_MIN, f"{share:.3f}: {wrong}"
    image = session.process_image(str(example_image()))
    assert session.chat(image, "图片里有什么？").response == UNANSWERABLE_REPLY


def test_follow_up_questions_are_answered_about_as_well_as_alone(answered):
    scored = [(r, a, alone) for r, a, alone in answered if r["task"] in LEARNT_TASKS]
    assert len(scored) >= 60 and all(r["history"] for r, _, _ in scored)
    size = EMBEDDED_SCENE.image_px
    in_turn = sum(is_correct(r, a, size) for r, a, _ in scored)
    alone = sum(is_correct(r, a, size) for r, _, a in scored)
    assert in_turn >= FOLLOW_UP_MIN * len(scored), f"{in_turn}/{len(scored)} (alone {alone})"
    assert in_turn >= FOLLOW_UP_VS_ALONE * alone, (
        f"{in_turn}/{len(scored)} after earlier turns, alone {alone}"
    )


def test_the_example_image_after_earlier_turns(session):
    image = session.process_image(str(example_image()))
    first = session.chat(image, "你好")
    assert first.response == UNANSWERABLE_REPLY
    second = session.chat(image, "What shape is the red object?", first.history)
    third = session.chat(image, "How many shapes are there?", second.history)
    assert third.response == "two", third.history
    # Left or right is at chance (see the model card): after three turns the answer must still be one.
    question = "Is the red circle left or right of the orange circle?"
    assert session.chat(image, question, third.history).response in {"left", "right"}
