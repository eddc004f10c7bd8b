"""The synthetic scene generator: seeded, unambiguous, and answers that agree with what is drawn."""

from __future__ import annotations

import json
import random

import pytest

from cogvlm.text_processors.grounding import parse_boxes, to_pixels
from cogvlm.train.data import jsonl_samples
from cogvlm.train.synthetic import (
    COLORS,
    TASKS,
    DatasetConfig,
    SceneConfig,
    caption,
    make_scene,
    mix_tasks,
    render,
    samples_for,
    with_article,
    write_dataset,
)

SCENE = SceneConfig(image_px=112, font_px=20, min_object_px=18, max_object_px=34)


def _scenes(count=200, seed=5):
    rng = random.Random(seed)
    return [make_scene(rng, SCENE) for _ in range(count)]


def test_scenes_never_repeat_a_colour_and_shape_and_never_overlap():
    for scene in _scenes():
        kinds = [(item.color, item.shape) for item in scene.objects]
        assert len(kinds) == len(set(kinds))
        boxes = [item.box for item in scene.objects] + ([scene.text_box] if scene.text_box else [])
        for i, a in enumerate(boxes):
            assert 0 <= a[0] < a[2] <= SCENE.image_px and 0 <= a[1] < a[3] <= SCENE.image_px
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_the_same_seed_gives_the_same_dataset(tmp_path):
    config = DatasetConfig(num_images=5, seed=11, scene=SCENE)
    write_dataset(tmp_path / "a", config)
    write_dataset(tmp_path / "b", config)
    assert (tmp_path / "a" / "tasks.jsonl").read_text() == (tmp_path / "b" / "tasks.jsonl").read_text()
    assert (tmp_path / "a/images/000003.png").read_bytes() == (tmp_path / "b/images/000003.png").read_bytes()
    other = write_dataset(tmp_path / "c", DatasetConfig(num_images=5, seed=12, scene=SCENE))
    assert other.read_text() != (tmp_path / "a" / "data.jsonl").read_text()


def test_answers_agree_with_the_drawn_scene():
    rng = random.Random(3)
    for scene in _scenes(100, seed=9):
        image = render(scene, SCENE)
        for sample in samples_for(scene, rng, SCENE):
            if sample.task == "grounding":
                box = to_pixels(parse_boxes(sample.answer)[0], SCENE.image_px, SCENE.image_px)
                (true,) = sample.boxes
                assert max(abs(box.x1 - true[0]), abs(box.y2 - true[3])) <= 0.56  # one thousandth of 112 px
                x, y = (true[0] + true[2]) // 2, (true[1] + true[3]) // 2 + 4
                color = next(i.color for i in scene.objects if i.box == true)
                assert image.getpixel((x, y)) == COLORS[color]  # the box holds the named colour
            if sample.task == "count":
                assert sample.answer == ("zero", "one", "two", "three", "four", "five")[len(scene.objects)]
            if sample.task == "text":
                assert sample.answer == scene.text and len(scene.text) == SCENE.text_length


def test_caption_lists_objects_left_to_right_with_articles():
    scene = next(s for s in _scenes() if len(s.objects) >= 2 and s.text is None)
    ordered = sorted(scene.objects, key=lambda item: item.center_x)
    text = caption(scene)
    positions = [text.lower().index(with_article(item.name)) for item in ordered]
    assert positions == sorted(positions)
    assert with_article("orange square") == "an orange square"


def test_the_training_file_is_the_fine_tuning_format(tmp_path):
    path = write_dataset(tmp_path, DatasetConfig(num_images=4, seed=1, scene=SCENE))
    samples = jsonl_samples(path)
    tasks = [json.loads(line) for line in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert len(samples) == len(tasks) > 4
    assert all(sample.image.is_file() for sample in samples)
    assert [s.answer for s in samples] == [t["answer"] for t in tasks]


def test_bad_scene_settings_are_refused():
    with pytest.raises(ValueError, match="max_object_px=80 is too large for image_px=112"):
        SceneConfig(image_px=112, max_object_px=80)


def test_mixing_repeats_thins_and_drops_tasks_and_keeps_image_paths_valid(tmp_path):
    dataset = tmp_path / "data"
    write_dataset(dataset, DatasetConfig(num_images=60, seed=8, scene=SCENE))
    tasks = [json.loads(line) for line in (dataset / "tasks.jsonl").read_text().splitlines()]
    before = {task: sum(r["task"] == task for r in tasks) for task in TASKS}
    weights = {"grounding": 2, "caption": 0.5, "count": 0}
    output, counts = mix_tasks(dataset, weights, tmp_path / "elsewhere" / "mix.jsonl", seed=1)
    assert counts["grounding"] == 2 * before["grounding"]
    assert counts["count"] == 0
    assert 0.25 * before["caption"] < counts["caption"] < 0.75 * before["caption"]
    assert counts["color"] == before["color"]
    samples = jsonl_samples(output)  # the fine-tuning reader: image paths resolve from the new file
    assert len(samples) == sum(counts.values())
    assert all(sample.image.is_file() for sample in samples)
    assert mix_tasks(dataset, weights, tmp_path / "again.jsonl", seed=1)[1] == counts
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['colour'\]"):
        mix_tasks(dataset, {"colour": 2}, tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="weights must be >= 0"):
        mix_tasks(dataset, {"text": -1}, tmp_path / "x.jsonl")


def test_an_explicit_weight_of_one_writes_the_same_file_as_the_default(tmp_path):
    # The training recipe names only the weights that differ from 1; this keeps it reproducible.
    dataset = tmp_path / "data"
    write_dataset(dataset, DatasetConfig(num_images=30, seed=3, scene=SCENE))
    implicit, _ = mix_tasks(dataset, {"grounding": 3}, tmp_path / "implicit.jsonl", seed=13)
    explicit_weights = {task: 1 for task in TASKS} | {"grounding": 3}
    explicit, _ = mix_tasks(dataset, explicit_weights, tmp_path / "explicit.jsonl", seed=13)
    assert explicit.read_bytes() == implicit.read_bytes()
    thinned, _ = mix_tasks(dataset, {"grounding": 3, "count": 0.5}, tmp_path / "thinned.jsonl", seed=13)
    assert thinned.read_bytes() != implicit.read_bytes()
