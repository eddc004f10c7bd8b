"""`cogvlm split-data`: seeded 80/5/15 splits that copy, never move, and write atomically."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cogvlm.train.split import SplitConfig, split_counts, split_dataset


def _folder(root, count):
    root.mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", (8, 8)).save(root / f"L{index}.{index}.jpg")
    return root


def test_the_reference_sizes_are_reproduced():
    assert split_counts(10000, (0.8, 0.05, 0.15)) == (8000, 500, 1500)
    assert sum(split_counts(7, (0.8, 0.05, 0.15))) == 7


def test_a_folder_split_copies_every_image_once_and_is_seeded(tmp_path):
    source = _folder(tmp_path / "src", 40)
    counts = split_dataset(SplitConfig(str(source), str(tmp_path / "a"), seed=3))
    assert counts == {"train": 32, "valid": 2, "test": 6}
    names = [p.name for split in ("train", "valid", "test") for p in (tmp_path / "a" / split).iterdir()]
    assert sorted(names) == sorted(p.name for p in source.iterdir())
    assert len(list(source.iterdir())) == 40
    split_dataset(SplitConfig(str(source), str(tmp_path / "b"), seed=3))
    split_dataset(SplitConfig(str(source), str(tmp_path / "c"), seed=4))
    train = {key: sorted(p.name for p in (tmp_path / key / "train").iterdir()) for key in "abc"}
    assert train["a"] == train["b"] != train["c"]


def test_a_jsonl_split_rewrites_image_paths_to_stay_valid(tmp_path):
    lines = [json.dumps({"image": f"img/{i}.png", "question": "q", "answer": str(i)}) for i in range(20)]
    (tmp_path / "all.jsonl").write_text("\n".join(lines))
    counts = split_dataset(SplitConfig(str(tmp_path / "all.jsonl"), str(tmp_path / "out"), (0.5, 0.25, 0.25)))
    assert counts == {"train": 10, "valid": 5, "test": 5}
    record = json.loads((tmp_path / "out" / "test.jsonl").read_text().splitlines()[0])
    assert record["image"] == str((tmp_path / "img" / f"{record['answer']}.png").resolve())


def test_bad_fractions_and_a_destination_inside_the_source_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must be three non-negative numbers summing to 1"):
        SplitConfig("a", "b", (0.8, 0.1, 0.2))
    source = _folder(tmp_path / "src", 3)
    with pytest.raises(ValueError, match="must lie outside the source"):
        split_dataset(SplitConfig(str(source), str(source / "split")))
