"""Training data: the captcha folder and JSONL formats, over-long samples, answer-only labels, batching."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from PIL import Image

from cogvlm.checkpoints.loading import load_model
from cogvlm.text_processors.tokenizer import LlamaTokenizer
from cogvlm.text_processors.training import IGNORE_INDEX, build_training_inputs
from cogvlm.train.data import VisionTextDataset, collate, read_samples, sample_prompt
from cogvlm.train.evaluation import batch_context
from cogvlm.train.loss import answer_token_losses
from tests.golden import golden_dir

SAT_DIR = golden_dir() / "cogvlm" / "sat_checkpoint"


@functools.cache
def tokenizer() -> LlamaTokenizer:
    return LlamaTokenizer.from_file(golden_dir() / "tokenizer.model")


@functools.cache
def model_and_config():
    model, info = load_model(SAT_DIR)
    return model, info.config


def _image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)
    return path


def _max_length() -> int:
    """Room for the golden model's image block and a short question and answer."""
    return model_and_config()[1].image_length + 48


def _dataset(samples, max_length=None, version="base"):
    config = model_and_config()[1]
    return VisionTextDataset(samples, tokenizer(), config, version, max_length or _max_length())


def test_a_captcha_folder_is_labelled_by_file_name_up_to_the_first_dot(tmp_path):
    _image(tmp_path / "b" / "x7Ab.2.jpg")
    _image(tmp_path / "Q12.png")
    (tmp_path / "notes.txt").write_text("not an image")
    samples = read_samples(tmp_path, prompt="CAPTCHA:")
    assert [(s.answer, s.question) for s in samples] == [("Q12", "CAPTCHA:"), ("x7Ab", "CAPTCHA:")]


def test_an_empty_folder_or_a_missing_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        read_samples(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_samples(tmp_path / "missing.jsonl")


def test_jsonl_records_resolve_images_beside_the_file_and_keep_their_history(tmp_path):
    _image(tmp_path / "img" / "a.png")
    record = {"image": "img/a.png", "question": "And now?", "answer": "red", "history": [["What?", "a box"]]}
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n\n")
    (sample,) = read_samples(tmp_path / "data.jsonl")
    assert sample.image == tmp_path / "img" / "a.png"
    assert sample.history == (("What?", "a box"),)
    assert sample.source == f"{tmp_path / 'data.jsonl'}:1"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"image": "a.png", "question": "q"}',
            r"data.jsonl:1: missing or non-string field\(s\) \['answer'\]",
        ),
        ('{"image": "a.png", "question": "q", "answer": "a", "label": 1}', r"unknown field\(s\) \['label'\]"),
        ('{"image": "a.png", "question": "q", "answer": "a", "history": [["q"]]}', "history"),
        ("{not json", "data.jsonl:1: not valid JSON"),
        (
            '{"image": "a.png", "question": "What is <EOI> here?", "answer": "a"}',
            r"data.jsonl:1: 'question': the text contains '<EOI>', which is reserved for the image",
        ),
        (
            '{"image": "a.png", "question": "q", "answer": "a", "history": [["q", "x <EOI>"]]}',
            r"data.jsonl:1: history turn 0's answer: the text contains '<EOI>'",
        ),
    ],
)
def test_bad_jsonl_records_name_the_file_line_and_problem(tmp_path, line, message):
    (tmp_path / "data.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_samples(tmp_path / "data.jsonl")


def test_labels_cover_the_answer_and_eos_only(tmp_path):
    samples = read_samples(_image(tmp_path / "d" / "4821.jpg").parent)
    item = _dataset(samples).items[0]
    answer_ids = tokenizer().encode("4821")
    targets = item.labels[item.labels != IGNORE_INDEX].tolist()
    assert targets == answer_ids + [tokenizer().eos_id]
    assert item.input_ids[-1] == tokenizer().eos_id and item.length == item.context_length + len(targets)


@pytest.mark.parametrize("version", ["base", "chat_old", "chat"])
def test_items_hold_only_their_ids_and_derive_the_reference_inputs_cut_at_their_length(tmp_path, version):
    _image(tmp_path / "a.png")
    records = [
        {"image": "a.png", "question": "Colour?", "answer": "red"},
        {"image": "a.png", "question": "And?", "answer": "a square", "history": [["Shape?", "a box"]]},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    config = model_and_config()[1]
    for item in _dataset(read_samples(tmp_path / "d.jsonl"), version=version).items:
        reference = build_training_inputs(
            tokenizer(),
            item.sample.answer,
            sample_prompt(item.sample, version),
            version=version,
            image_length=config.image_length,
            max_target_length=_max_length(),
        )
        cut = slice(0, item.length)
        for name in ("input_ids", "labels", "position_ids", "image_embed_mask", "vision_expert_mask"):
            assert torch.equal(item.tensors()[name], getattr(reference, name)[0, cut]), name
        assert (reference.labels[0, item.length :] == IGNORE_INDEX).all()  # only padding was cut
        assert item.context_length == reference.context_length
        # Compact: 4 bytes a token, no padded tensors kept per sample.
        assert item.ids.itemsize == 4 and len(item.ids) == item.length
        assert not any(isinstance(value, torch.Tensor) for value in vars(item).values())


def test_multi_turn_history_is_context_and_only_the_last_answer_is_scored(tmp_path):
    _image(tmp_path / "a.png")
    record = {"image": "a.png", "question": "Colour?", "answer": "red", "history": [["Shape?", "a square"]]}
    (tmp_path / "d.jsonl").write_text(json.dumps(record))
    item = _dataset(read_samples(tmp_path / "d.jsonl"), version="chat_old").items[0]
    prompt_text = tokenizer().decode(item.input_ids[: item.context_length].tolist())
    assert "Shape? Answer: a square\nQuestion: Colour? Answer:" in prompt_text
    assert item.labels[item.labels != IGNORE_INDEX].tolist() == tokenizer().encode("red") + [
        tokenizer().eos_id
    ]


def test_over_long_samples_are_skipped_and_reported_never_truncated(tmp_path):
    _image(tmp_path / "ok.png")
    _image(tmp_path / "long.png")
    records = [
        {"image": "ok.png", "question": "q", "answer": "short"},
        {"image": "long.png", "question": "q", "answer": " ".join(["word"] * _max_length())},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    dataset = _dataset(read_samples(tmp_path / "d.jsonl"))
    assert [item.sample.answer for item in dataset.items] == ["short"]
    (skipped,) = dataset.skipped
    assert skipped.source.endswith("d.jsonl:2") and "caption length" in skipped.reason
    with pytest.raises(
        ValueError, match=f"every one of the 1 samples is too long for max_length {_max_length()}"
    ):
        _dataset(read_samples(tmp_path / "d.jsonl")[1:])


def _examples(tmp_path, labels):
    folder = tmp_path / "imgs"
    for index, label in enumerate(labels):
        _image(folder / f"{label}.{index}.png", colour=(index * 40, 100, 200 - index * 40))
    dataset = _dataset(read_samples(folder))
    return dataset, [dataset[i] for i in range(len(dataset))]


def test_collate_pads_to_the_longest_sample_with_ignored_labels(tmp_path):
    dataset, examples = _examples(tmp_path, ["7", "123456789"])
    batch = collate(examples, tokenizer().pad_id)
    lengths = [example["item"].length for example in examples]
    assert batch.input_ids.shape == (2, max(lengths))
    short = lengths.index(min(lengths))
    assert (batch.input_ids[short, min(lengths) :] == tokenizer().pad_id).all()
    assert (batch.labels[short, min(lengths) :] == IGNORE_INDEX).all()
    positions = batch.position_ids[short]
    assert torch.equal(
        positions[min(lengths) :] - positions[min(lengths) - 1],
        torch.arange(1, max(lengths) - min(lengths) + 1),
    )
    image_px = model_and_config()[1].vision.image_px
    assert batch.pixel_values.shape == (2, 3, image_px, image_px) and batch.num_tokens == sum(lengths)


def test_a_samples_loss_does_not_depend_on_the_padding_its_batch_needs(tmp_path):
    model, _ = model_and_config()
    _, examples = _examples(tmp_path, ["7", "123456789"])
    short = min(range(2), key=lambda i: examples[i]["item"].length)
    with torch.no_grad():
        padded = collate(examples, tokenizer().pad_id)
        sums, counts = answer_token_losses(
            model(padded.input_ids, batch_context(padded)).logits, padded.labels
        )
        alone = collate([examples[short]], tokenizer().pad_id)
        alone_sum, alone_count = answer_token_losses(
            model(alone.input_ids, batch_context(alone)).logits, alone.labels
        )
    assert counts[short] == alone_count[0]
    # Causal attention: padding after the sample cannot reach it; only BLAS blocking differs.
    torch.testing.assert_close(sums[short], alone_sum[0], atol=1e-5, rtol=1e-6)
