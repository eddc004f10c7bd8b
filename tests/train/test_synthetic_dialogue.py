"""Off-topic and multi-turn samples for the embedded model: true histories, honest replies, disjoint pools."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from cogvlm.train.data import jsonl_samples
from cogvlm.train.synthetic import DatasetConfig, SceneConfig, mix_tasks, write_dataset
from cogvlm.train.synthetic_dialogue import (
    UNANSWERABLE,
    UNANSWERABLE_REPLY,
    dialogue_extras,
    fixed_off_topic,
    off_topic_question,
    write_dialogue_set,
)
from cogvlm.train.synthetic_eval import evaluate

SCENE = SceneConfig(image_px=112, font_px=20, min_object_px=18, max_object_px=34)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    write_dataset(directory, DatasetConfig(num_images=40, seed=8, scene=SCENE))
    return directory


def _by_image(dataset) -> dict[str, set[tuple[str, str]]]:
    turns: dict[str, set[tuple[str, str]]] = {}
    for record in map(json.loads, (dataset / "tasks.jsonl").read_text().splitlines()):
        turns.setdefault(record["image"], set()).add((record["question"], record["answer"]))
    return turns


def test_extras_are_honest_replies_and_true_histories_about_one_image(dataset):
    truth = _by_image(dataset)
    extras = dialogue_extras(dataset, unanswerable=50, multi_turn=80, seed=3)
    assert len(extras) == 130
    off_topic = [r for r in extras if r["task"] == UNANSWERABLE]
    assert len(off_topic) == 50 and all(r["answer"] == UNANSWERABLE_REPLY for r in off_topic)
    questions = {question for pairs in truth.values() for question, _ in pairs}
    assert not {r["question"] for r in off_topic} & questions  # never one the model should answer
    multi = [r for r in extras if r["task"] != UNANSWERABLE]
    assert len(multi) == 80 and all(1 <= len(r["history"]) <= 3 for r in multi)
    for record in multi:
        assert (record["question"], record["answer"]) in truth[record["image"]]
        for question, answer in record["history"]:  # earlier turns: this image's true answers, or a refusal
            assert (question, answer) in truth[record["image"]] or answer == UNANSWERABLE_REPLY
    assert dialogue_extras(dataset, 50, 80, seed=3) == extras  # seeded


def test_the_train_and_test_pools_of_fixed_questions_are_disjoint():
    train, test = set(fixed_off_topic("train")), set(fixed_off_topic("test"))
    assert train and test and not train & test
    assert "这是什么？" in train | test and "Who are you?" in train | test
    rng = random.Random(0)
    asked = {off_topic_question(rng, "test") for _ in range(2000)}
    assert test <= asked and not asked & train
    with pytest.raises(ValueError, match="split must be"):
        off_topic_question(rng, "valid")


def test_mix_data_adds_them_in_the_fine_tuning_format(dataset, tmp_path):
    command = [sys.executable, "-m", "cogvlm.cli", "mix-data", str(dataset), "--seed", "2"]
    command += ["--output", str(tmp_path / "m.jsonl"), "--unanswerable", "30", "--multi_turn", "40"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    counts = json.loads(result.stdout)["samples"]
    assert counts[UNANSWERABLE] == 30 and counts["multi_turn"] == 40
    samples = jsonl_samples(tmp_path / "m.jsonl")  # the fine-tuning reader takes the histories
    assert len(samples) == sum(counts.values())
    assert sum(bool(s.history) for s in samples) >= 40 and all(s.image.is_file() for s in samples)
    plain, _ = mix_tasks(dataset, {}, tmp_path / "plain.jsonl", seed=2)
    assert len(plain.read_text().splitlines()) == len(samples) - 70


def test_a_dialogue_test_set_is_scored_with_its_histories(dataset, tmp_path):
    path = write_dialogue_set(dataset, tmp_path / "dialogue", unanswerable=20, multi_turn=30, seed=4)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    truth = {(r["question"], json.dumps(r["history"])): r["answer"] for r in records}

    def perfect(questions):  # right only when it gets the history it was asked with
        return [truth.get((q, json.dumps(history)), "?") for _, q, history in questions]

    scores = evaluate(perfect, tmp_path / "dialogue", 112)
    assert scores[UNANSWERABLE].total == 20 and sum(s.total for s in scores.values()) == 50
    assert all(score.accuracy == 1.0 for score in scores.values())
    blind = evaluate(lambda qs: [truth.get((q, "[]"), "?") for _, q, _ in qs], tmp_path / "dialogue", 112)
    assert sum(s.correct for s in blind.values()) < 50
