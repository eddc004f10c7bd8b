"""The whole data set is checked before training: malformed records, images outside the data folder
(symbolic links included), missing, undecodable or oversized images are all listed at once."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from cogvlm.errors import DatasetError
from cogvlm.train.validation import load_checked_samples


def _image(path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def _record(image, answer="red"):
    return json.dumps({"image": str(image), "question": "colour?", "answer": answer})


def test_a_clean_folder_and_jsonl_pass(tmp_path):
    _image(tmp_path / "folder" / "4821.jpg")
    assert [s.answer for s in load_checked_samples(tmp_path / "folder")] == ["4821"]
    _image(tmp_path / "data" / "img" / "a.png")
    (tmp_path / "data" / "d.jsonl").write_text(_record("img/a.png") + "\n")
    assert len(load_checked_samples(tmp_path / "data" / "d.jsonl")) == 1


def test_every_bad_jsonl_record_is_named_with_its_line_and_reason(tmp_path):
    data = tmp_path / "data"
    _image(data / "img" / "good.png")
    _image(tmp_path / "elsewhere" / "secret.png")
    (data / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _image(data / "img" / "huge.png", size=(300, 200))
    lines = [
        _record("img/good.png"),  # 1: fine
        _record("img/missing.png"),  # 2
        _record("../elsewhere/secret.png"),  # 3: outside through ..
        _record(tmp_path / "elsewhere" / "secret.png"),  # 4: outside, absolute
        "{not json",  # 5
        json.dumps({"image": "img/good.png", "question": "q"}),  # 6: no answer
        _record("img/corrupt.png"),  # 7
        _record("img/huge.png"),  # 8: above max_pixels
        _record("img/good.png", answer="  "),  # 9: empty answer
    ]
    (data / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as raised:
        load_checked_samples(data / "d.jsonl", max_pixels=100 * 100, what="training")
    message = str(raised.value)
    assert message.startswith(f"training data {data / 'd.jsonl'} (9 records): 8 problem(s):")
    reasons = {int(m.group(1)): m.group(2) for m in re.finditer(r"d\.jsonl:(\d+): (.*)", message)}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "not found" in reasons[2]
    assert "outside the data folder" in reasons[3] and "--allow_outside_data" in reasons[3]
    assert "outside the data folder" in reasons[4]
    assert "not valid JSON" in reasons[5] and "['answer']" in reasons[6]
    assert "not an image file" in reasons[7] or "cannot" in reasons[7]
    assert "60000 pixels exceeds max_pixels=10000" in reasons[8]
    assert "answer is empty" in reasons[9]


def test_allow_outside_data_accepts_paths_and_links_outside(tmp_path):
    data = tmp_path / "data"
    outside = _image(tmp_path / "elsewhere" / "7.png")
    _image(data / "1.png")
    (data / "2.png").symlink_to(outside)
    with pytest.raises(DatasetError, match=r"2\.png: image .* lies outside the data folder"):
        load_checked_samples(data)
    assert sorted(s.answer for s in load_checked_samples(data, allow_outside=True)) == ["1", "2"]


def test_a_link_inside_the_folder_is_fine(tmp_path):
    target = _image(tmp_path / "data" / "store" / "x.png")
    (tmp_path / "data" / "9.png").symlink_to(target)
    assert len(load_checked_samples(tmp_path / "data")) == 2


def test_many_problems_show_the_first_ten_and_the_count(tmp_path):
    data = tmp_path / "data"
    _image(data / "img" / "ok.png")
    lines = [_record(f"img/missing{i}.png") for i in range(12)] + [_record("img/ok.png")]
    (data / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as raised:
        load_checked_samples(data / "d.jsonl")
    message = str(raised.value)
    assert "(13 records): 12 problem(s), first 10:" in message
    assert message.count("not found") == 10 and "missing9.png" in message and "missing10.png" not in message
