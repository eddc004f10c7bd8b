"""`cogvlm caption`: folder, JSONL and glob inputs answered as `cogvlm chat` answers them one by one;
resuming after a kill or a half-written line; the same output from one rank, from two data-parallel ranks
and from two tensor-parallel groups of two under torchrun."""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from cogvlm import api
from cogvlm.embedded import example_image
from cogvlm.frontends.caption import EMBEDDED_QUERY, CaptionConfig, run_caption
from cogvlm.frontends.caption_inputs import list_inputs
from cogvlm.frontends.caption_records import part_path, read_records
from cogvlm.frontends.chat import ChatConfig, ChatLoop
from cogvlm.inference.settings import GenerationSettings
from tests.golden import golden_dir, stop_string_in
from tests.parallel.torchrun_jobs import environment

CHECKPOINT = golden_dir() / "cogvlm" / "sat_checkpoint"
CHECKPOINTS = {"cogvlm": CHECKPOINT, "cogagent": golden_dir() / "cogagent" / "sat_checkpoint"}
TOKENIZER = golden_dir() / "tokenizer.model"
VERSION = "chat_old"
NEW_TOKENS = 12  # short answers keep the runs quick; the tiny model would otherwise fill its context
QUERY = "What is in the image?"
TIMEOUT_S = 300
FLAGS = [
    "--from_pretrained", str(CHECKPOINT), "--local_tokenizer", str(TOKENIZER), "--version", VERSION,
    "--max_new_tokens", str(NEW_TOKENS), "--query", QUERY,
]  # fmt: skip


@functools.cache
def session(checkpoint: Path) -> api.CogVLM:
    return api.load(checkpoint, local_tokenizer=str(TOKENIZER), version=VERSION)


def chat_answer(image: Path, query: str, checkpoint: Path = CHECKPOINT, stop: tuple[str, ...] = ()) -> str:
    """What `cogvlm chat --image IMAGE --query QUERY` prints with the same model flags."""
    generation = GenerationSettings(max_new_tokens=NEW_TOKENS, stop_strings=stop)
    model = api.ModelSource(str(checkpoint), local_tokenizer=str(TOKENIZER), version=VERSION)
    config = ChatConfig(model, generation=generation, image=str(image), query=query)
    output = io.StringIO()
    ChatLoop(session(checkpoint), config, output, input).answer_once(str(image), query)
    return output.getvalue().removesuffix("\n")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def caption(source, output: Path, checkpoint: Path = CHECKPOINT, log=None, stop=(), **fields):
    config = CaptionConfig(
        source=str(source),
        output=output,
        model=api.ModelSource(str(checkpoint), local_tokenizer=str(TOKENIZER), version=VERSION),
        generation=GenerationSettings(max_new_tokens=NEW_TOKENS, stop_strings=stop),
        **{"query": QUERY, "batch_size": 3, **fields},
    )
    return run_caption(config, log=log or io.StringIO())


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder of five images of different sizes and contents (one in a subfolder) and a broken one."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    Image.open(golden_dir() / "test_image.png").save(folder / "golden.png")
    Image.new("RGB", (90, 60), (200, 30, 30)).save(folder / "red.jpg")
    Image.new("L", (40, 70), 120).save(folder / "grey.png")
    Image.effect_noise((64, 64), 60).convert("RGB").save(folder / "more" / "noise.png")
    Image.radial_gradient("L").save(folder / "more" / "gradient.bmp")
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("not an input")
    return folder


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_answers_are_chats(records: list[dict], checkpoint: Path = CHECKPOINT) -> None:
    for record in records:
        if "error" not in record:
            expected = chat_answer(Path(record["image"]), record["query"], checkpoint)
            assert record["answer"] == expected, record["image"]


@pytest.mark.parametrize("model", sorted(CHECKPOINTS))
def test_a_folder_is_answered_in_path_order_as_chat_answers_each_image(images, tmp_path, model):
    output = tmp_path / "out.jsonl"
    summary = caption(images, output, CHECKPOINTS[model])
    records = read_lines(output)
    expected = sorted(str(p) for p in images.rglob("*") if p.suffix in {".png", ".jpg", ".bmp"})
    assert [r["image"] for r in records] == [r["id"] for r in records] == expected
    assert {r["query"] for r in records} == {QUERY}
    broken = next(r for r in records if r["image"].endswith("broken.png"))
    assert "answer" not in broken and "broken.png" in broken["error"]
    assert all("answer" in r for r in records if r is not broken)
    assert len({r.get("answer") for r in records}) == 6  # the images get different answers
    assert_answers_are_chats(records, CHECKPOINTS[model])
    assert (summary.records, summary.errors, summary.done_now) == (6, 1, 6)


def test_jsonl_records_keep_their_order_ids_queries_and_relative_paths(images, tmp_path):
    source = images / "inputs.jsonl"
    rows = [
        {"image": "red.jpg", "query": "What colour is it?"},
        {"image": "more/noise.png"},
        {"image": "red.jpg", "query": "Is it round?", "id": 7},
        {"image": str(images / "golden.png"), "id": "golden"},
        {"image": "missing.png"},
    ]
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    output = tmp_path / "out.jsonl"
    caption(source, output, query="Describe this image.", batch_size=2)
    records = read_lines(output)
    assert [r["id"] for r in records] == ["red.jpg", "more/noise.png", 7, "golden", "missing.png"]
    default = "Describe this image."
    assert [r["query"] for r in records] == ["What colour is it?", default, "Is it round?", default, default]
    assert "not found" in records[4]["error"]
    for record in records[:4]:
        image = Path(record["image"]) if record["id"] == "golden" else images / record["image"]
        assert record["answer"] == chat_answer(image, record["query"])


def test_a_glob_takes_only_the_matching_files_and_a_terminal_sees_progress(images, tmp_path):
    output = tmp_path / "out.jsonl"
    terminal = Terminal()
    caption(str(images / "**" / "*.png"), output, batch_size=4, log=terminal)
    records = read_lines(output)
    expected = sorted(str(p) for p in images.rglob("*.png"))
    assert [r["image"] for r in records] == expected
    assert "\rcaption: 4/4 inputs of this rank" in terminal.getvalue()
    assert_answers_are_chats(records)


def test_a_stop_string_cuts_the_answer_as_chat_cuts_it(images, tmp_path):
    full = chat_answer(images / "golden.png", QUERY)
    stop = stop_string_in(full)
    output = tmp_path / "out.jsonl"
    caption(images / "golden.png", output, stop=(stop,))
    [record] = read_lines(output)
    assert record["answer"] == chat_answer(images / "golden.png", QUERY, stop=(stop,))
    assert stop not in record["answer"] and len(record["answer"]) < len(full)


def test_a_half_written_last_line_is_cut_and_finished_inputs_are_skipped(images, tmp_path):
    inputs = list_inputs(str(images), QUERY)
    output = tmp_path / "out.jsonl"
    kept = {"id": inputs[0].id, "image": inputs[0].image, "query": QUERY, "answer": "kept from before"}
    half = json.dumps({"id": inputs[1].id, "image": inputs[1].image, "query": QUERY, "answer": "cut"})
    output.write_text(json.dumps(kept) + "\n" + half[: len(half) // 2])
    caption(images, output)
    records = read_lines(output)
    assert [r["id"] for r in records] == [item.id for item in inputs]  # each once, in input order
    assert records[0] == kept  # not answered again
    assert records[1]["answer"] == chat_answer(inputs[1].path, QUERY)


def test_parts_left_by_an_interrupted_multi_rank_run_are_merged_by_a_single_rank_rerun(images, tmp_path):
    inputs = list_inputs(str(images), QUERY)
    output = tmp_path / "out.jsonl"
    records = [
        {"id": item.id, "image": item.image, "query": QUERY, "answer": f"#{i}"}
        for i, item in enumerate(inputs)
    ]
    part_path(output, 1).write_text(json.dumps(records[3]) + "\n" + json.dumps(records[1]) + "\n")
    output.write_text(json.dumps(records[4]) + "\n")
    summary = caption(images, output)
    merged = read_lines(output)
    assert [r["id"] for r in merged] == [item.id for item in inputs]
    assert [merged[i] for i in (1, 3, 4)] == [records[i] for i in (1, 3, 4)]
    assert summary.done_now == len(inputs) - 3
    assert not list(tmp_path.glob("out.jsonl.part-*"))


def test_bad_inputs_and_foreign_outputs_are_errors_that_name_the_problem(images, tmp_path):
    (images / "dup.jsonl").write_text('{"image": "red.jpg"}\n{"image": "red.jpg"}\n')
    with pytest.raises(ValueError, match="inputs 1 and 2 have the same id 'red.jpg'"):
        list_inputs(str(images / "dup.jsonl"), QUERY)
    (images / "bad.jsonl").write_text('{"image": "red.jpg"}\n{"query": "no image"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: \"image\" must be"):
        list_inputs(str(images / "bad.jsonl"), QUERY)
    with pytest.raises(FileNotFoundError, match="no images found"):
        list_inputs(str(tmp_path / "nothing*.png"), QUERY)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"text": "something else"}\n{"id": "a", "query": "q"}\n')
    with pytest.raises(ValueError, match="foreign.jsonl line 1: not a caption record"):
        read_records(foreign)
    assert foreign.read_text().startswith('{"text"')  # left as it was
    with pytest.raises(ValueError, match="is the input file"):
        CaptionConfig(source=str(images / "dup.jsonl"), output=images / "dup.jsonl")
    with pytest.raises(ValueError, match="the output is JSONL"):
        CaptionConfig(source=str(images), output=tmp_path / "captions.txt")


def _cli(*args: str, nproc: int = 1) -> list[str]:
    launch = ["--nproc", str(nproc)] if nproc > 1 else []
    return [sys.executable, "-m", "cogvlm.cli", "caption", *args, *FLAGS, *launch]


def test_a_killed_run_resumes_with_every_input_exactly_once(images, tmp_path):
    queries = [f"Question {i}: what is shown?" for i in range(40)]
    source = images / "many.jsonl"
    source.write_text("".join(json.dumps({"image": "golden.png", "query": q}) + "\n" for q in queries))
    output = tmp_path / "out.jsonl"
    process = subprocess.Popen(
        _cli(str(source), "--output", str(output), "--batch_size", "2"), env=environment()
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not (output.exists() and output.read_text().count("\n") >= 3):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    done_before = output.read_text().count("\n")
    assert 3 <= done_before < len(queries)
    rerun = subprocess.run(
        _cli(str(source), "--output", str(output)),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    records = read_lines(output)
    assert [r["query"] for r in records] == queries
    assert f"{len(queries) - done_before} done by this run" in rerun.stderr
    for record in records[:: len(queries) // 4]:
        assert record["answer"] == chat_answer(images / "golden.png", record["query"])


@pytest.mark.parametrize(
    ("nproc", "tp_size"), [(2, 1), (4, 2)], ids=["2-data-parallel", "2-data-parallel-x-2-tensor-parallel"]
)
def test_ranks_under_torchrun_write_what_one_rank_writes(images, tmp_path, nproc, tp_size):
    single = tmp_path / "single.jsonl"
    caption(images, single, batch_size=2)
    output = tmp_path / "two.jsonl"
    args = [str(images), "--output", str(output), "--batch_size", "2", "--tp_size", str(tp_size)]
    env = environment()
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        _cli(*args, nproc=nproc), env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.read_bytes() == single.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["single.jsonl", "two.jsonl"]
    assert result.stderr.count("6 records (1 with an error)") == 1  # rank 0 alone reports


def test_infer_defaults_to_the_embedded_model_and_its_caption_query(tmp_path):
    image = example_image()
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "cogvlm.cli", "infer", str(image), "--output", str(output)]
    result = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    [record] = read_lines(output)
    assert record["query"] == EMBEDDED_QUERY
    embedded = api.load()
    assert record["answer"] == embedded.chat(image, EMBEDDED_QUERY, (), embedded.generation_config()).response


def test_the_cli_hands_prompt_style_and_sampling_flags_to_the_caption_run(monkeypatch, tmp_path):
    from cogvlm import cli
    from cogvlm.frontends import caption

    seen = []
    monkeypatch.setattr(caption, "run_caption", seen.append)
    argv = ["caption", str(tmp_path), "--output", str(tmp_path / "out.jsonl"), "--prompt_style", "hf"]
    cli.main([*argv, "--top_k", "3", "--stop", "END"])
    (config,) = seen
    assert config.model.prompt_style == "hf"
    assert (config.generation.top_k, config.generation.stop_strings) == (3, ("END",))
