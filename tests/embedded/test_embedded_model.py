"""The shipped model: small, the default everywhere, and as good as its model card says on fresh data.

The scores are measured on a test set generated here with a seed used nowhere else (training used seed 1,
the model card's held-out set seed 3, the example image seed 10), so a model that memorised its data
would fail.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogvlm import cli
from cogvlm.api import load
from cogvlm.checkpoints.download import DownloadConfig
from cogvlm.checkpoints.resolve import resolve_checkpoint
from cogvlm.checkpoints.sat_format import load_sat_weights
from cogvlm.embedded import EXAMPLE_SEED, embedded_checkpoint, example_image
from cogvlm.text_processors.grounding import PixelBox, parse_boxes, to_pixels
from cogvlm.train.synthetic import (
    EMBEDDED_SCENE,
    TEXT_ALPHABET,
    DatasetConfig,
    make_scene,
    render,
    write_dataset,
)
from cogvlm.train.synthetic_eval import evaluate, iou, session_answerer

TEST_SEED = 20261123
TEST_IMAGES = 150
MAX_SHIPPED_BYTES = 20 * 10**6
# Minimum score per task on this test set (exact match; grounding: IoU >= 0.5), set a margin below what
# the shipped model scores here and on the model card's held-out set (see MODEL_CARD.md). Text reading is
# not learnt (exact match 0): `test_text_answers_have_the_form_of_a_code` checks what it does learn.
THRESHOLDS = {
    "caption": 0.03,
    "color": 0.60,
    "shape": 0.33,
    "count": 0.80,
    "position": 0.40,
    "grounding": 0.07,
    "box_caption": 0.27,
}


@pytest.fixture(scope="module")
def session():
    return load()


@pytest.fixture(scope="module")
def scores(session, tmp_path_factory):
    data = tmp_path_factory.mktemp("fresh-test-set")
    write_dataset(data, DatasetConfig(num_images=TEST_IMAGES, seed=TEST_SEED, scene=EMBEDDED_SCENE))
    return evaluate(session_answerer(session), data, EMBEDDED_SCENE.image_px)


@pytest.mark.parametrize("task", sorted(THRESHOLDS))
def test_held_out_score_per_task_meets_its_threshold(scores, task):
    score = scores[task]
    assert score.total >= 40, f"{task}: only {score.total} test samples"
    assert score.accuracy >= THRESHOLDS[task], f"{task}: {score.correct}/{score.total} = {score.accuracy:.3f}"


def test_text_answers_have_the_form_of_a_code(session, tmp_path):
    # Reading the codes is not learnt (exact match is at chance, see the model card); the form is.
    data = tmp_path / "texts"
    write_dataset(data, DatasetConfig(num_images=40, seed=TEST_SEED + 1, scene=EMBEDDED_SCENE))
    records = [json.loads(line) for line in (data / "tasks.jsonl").read_text().splitlines()]
    records = [record for record in records if record["task"] == "text"]
    answers = session_answerer(session)([(data / r["image"], r["question"]) for r in records])
    well_formed = [len(a) == 4 and all(c in TEXT_ALPHABET for c in a) for a in answers]
    assert len(records) >= 10 and sum(well_formed) >= 0.9 * len(records), answers


def test_shipped_files_are_small_enough():
    files = [path for path in embedded_checkpoint().rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"model_config.json", "latest", "tokenizer.model"}
    assert sum(path.stat().st_size for path in files) <= MAX_SHIPPED_BYTES


def test_example_image_is_the_held_out_scene_it_claims_to_be():
    scene = make_scene(random.Random(EXAMPLE_SEED), EMBEDDED_SCENE)
    shipped = np.asarray(Image.open(example_image()).convert("RGB"))
    assert np.array_equal(shipped, np.asarray(render(scene, EMBEDDED_SCENE)))


def _example_object(name: str) -> PixelBox:
    scene = make_scene(random.Random(EXAMPLE_SEED), EMBEDDED_SCENE)
    (found,) = [item for item in scene.objects if item.name == name]
    return PixelBox(*found.box)


def _red_circle() -> PixelBox:
    return _example_object("red circle")


def test_readme_command_finds_the_red_circle_and_draws_it(tmp_path):
    command = [
        sys.executable, "-m", "cogvlm.cli", "chat", "--image", str(example_image()),
        "--query", "Where is the red circle?", "--grounding_dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    answer, drawn = result.stdout.strip().splitlines()
    boxes = parse_boxes(answer)
    assert boxes, answer
    size = EMBEDDED_SCENE.image_px
    assert iou(to_pixels(boxes[0], size, size), _red_circle()) >= 0.5, answer
    assert drawn.startswith("Boxes drawn on a copy of the image: ")
    path = drawn.removeprefix("Boxes drawn on a copy of the image: ")
    assert path.startswith(str(tmp_path))
    assert Image.open(path).size == Image.open(example_image()).size


def test_default_model_counts_and_compares_on_the_example(session):
    image = session.process_image(str(example_image()))
    assert session.chat(image, "How many shapes are there?").response == "two"
    side = "left" if _red_circle().x1 < _example_object("orange circle").x1 else "right"
    question = "Is the red circle left or right of the orange circle?"
    assert session.chat(image, question).response == side


def test_embedded_is_the_name_and_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "embedded" is a name, not a folder of the working directory ...
    offline = DownloadConfig(sat_home=tmp_path, is_offline=True)
    assert resolve_checkpoint("embedded", offline) == embedded_checkpoint()
    (tmp_path / "embedded").mkdir()  # ... unless such a folder exists, as for every other name
    assert resolve_checkpoint("embedded", offline) == Path("embedded")
    for command in ("chat", "serve", "web"):
        assert cli.build_parser().parse_args([command]).from_pretrained == "embedded"


def test_loads_in_float32_on_the_cpu_although_shipped_in_float16(session):
    weights = next(session.model.parameters())
    assert weights.dtype == torch.float32
    shipped = load_sat_weights(embedded_checkpoint() / "1" / "mp_rank_00_model_states.pt")
    assert {tensor.dtype for tensor in shipped.values()} == {torch.float16}
