"""Scoring on a synthetic test set: exact match per task, IoU >= 0.5 for grounding."""

from __future__ import annotations

import json

import pytest

from cogvlm.text_processors.grounding import PixelBox
from cogvlm.train.synthetic import DatasetConfig, SceneConfig, write_dataset
from cogvlm.train.synthetic_eval import evaluate, iou, is_correct

SCENE = SceneConfig(image_px=112, font_px=20, min_object_px=18, max_object_px=34)


def test_iou():
    assert iou(PixelBox(0, 0, 10, 10), PixelBox(0, 0, 10, 10)) == 1.0
    assert iou(PixelBox(0, 0, 10, 10), PixelBox(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou(PixelBox(0, 0, 10, 10), PixelBox(20, 20, 30, 30)) == 0.0


def test_grounding_counts_as_correct_from_iou_one_half():
    record = {"task": "grounding", "answer": "[[000,000,500,500]]", "boxes": [[0, 0, 56, 56]]}
    assert is_correct(record, "[[000,000,500,500]]", 112)
    assert is_correct(record, "the box [[000,000,450,450]] here", 112)  # IoU 0.81
    assert not is_correct(record, "[[250,250,750,750]]", 112)  # IoU 0.14
    assert not is_correct(record, "no box at all", 112)
    assert is_correct({"task": "color", "answer": "red"}, " red ", 112)
    assert not is_correct({"task": "color", "answer": "red"}, "Red", 112)


@pytest.fixture
def dataset(tmp_path):
    write_dataset(tmp_path, DatasetConfig(num_images=12, seed=4, scene=SCENE))
    return tmp_path


def test_perfect_and_wrong_answerers_score_one_and_zero(dataset):
    truth = {
        (str(dataset / r["image"]), r["question"]): r["answer"]
        for r in map(json.loads, (dataset / "tasks.jsonl").read_text().splitlines())
    }
    perfect = evaluate(lambda qs: [truth[(str(i), q)] for i, q, _ in qs], dataset, 112, batch_size=5)
    assert perfect and all(score.accuracy == 1.0 for score in perfect.values())
    wrong = evaluate(lambda qs: ["nothing"] * len(qs), dataset, 112)
    assert all(score.correct == 0 for score in wrong.values())
    assert sum(s.total for s in perfect.values()) == len(truth)


def test_per_task_limits_the_samples(dataset):
    scores = evaluate(lambda qs: ["x"] * len(qs), dataset, 112, per_task=3)
    assert all(score.total <= 3 for score in scores.values())
    assert scores["caption"].total == 3
