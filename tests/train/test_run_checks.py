"""Real `cogvlm finetune` runs on CPU (DeepSpeed, gloo): a bad data set is refused before the first step,
resuming in another parallel layout is refused up front, a run leaves its plot, `merge-lora` takes an
iteration, and `evaluate` writes and shows its predictions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from cogvlm.checkpoints.sat_format import load_sat_weights, open_sat_checkpoint
from cogvlm.train.metrics import read_metrics
from cogvlm.train.plot import PLOT_FILE
from tests.train.conftest import REPO, FinishedRun, cli, finetune_args, run_cli, subprocess_env

SHORT_RUN = (
    "--fp32", "--zero_stage", "1", "--micro_batch_size", "4", "--train_iters", "2", "--lr", "1e-2",
    "--save_interval", "1", "--eval_interval", "1", "--eval-iters", "1", "--eval-batch-size", "2",
    "--max_new_tokens", "4", "--lora_rank", "4", "--lora_alpha", "8",
)  # fmt: skip


@pytest.fixture(scope="module")
def short_run(small_captcha_data, tmp_path_factory) -> FinishedRun:
    """Two steps with validation every step and a test split, a checkpoint after each."""
    save = tmp_path_factory.mktemp("short") / "run"
    valid = str(small_captcha_data.root / "valid")
    args = finetune_args(
        small_captcha_data.root, save, "--valid_data", valid, "--test-data", valid, *SHORT_RUN
    )
    result = run_cli(args)
    return FinishedRun(save, result.stdout, result.stderr)


def test_a_run_leaves_its_plot_and_scores_eval_iters_batches_of_eval_batch_size(short_run):
    with Image.open(short_run.save_dir / PLOT_FILE) as plot:
        assert plot.format == "PNG" and plot.size[1] > plot.size[0] / 2  # loss and accuracy charts
        plot.load()
    assert f"loss/accuracy plot: {short_run.save_dir / PLOT_FILE}" in short_run.stderr
    valid = read_metrics(short_run.save_dir, "valid")
    assert sorted(valid) == [1, 2] and all(record["samples"] == 2 for record in valid.values())
    test = [
        json.loads(line)["test_evaluation"]
        for line in short_run.stdout.splitlines()
        if "test_evaluation" in line
    ]
    assert len(test) == 1 and test[0]["samples"] == 2


def _merged_weights(folder) -> dict[str, torch.Tensor]:
    return load_sat_weights(open_sat_checkpoint(folder).weight_files[0])


def test_merge_lora_takes_an_iteration(short_run, tmp_path):
    run_cli(["merge-lora", "--from_pretrained", str(short_run.save_dir), "--save", str(tmp_path / "i1"),
             "--iteration", "1"])  # fmt: skip
    run_cli(["merge-lora", "--from_pretrained", str(short_run.save_dir), "--save", str(tmp_path / "latest")])
    run_cli(["merge-lora", "--from_pretrained", str(short_run.save_dir), "--save", str(tmp_path / "i2"),
             "--iteration", "2"])  # fmt: skip
    first, latest, second = (_merged_weights(tmp_path / name) for name in ("i1", "latest", "i2"))
    assert first.keys() == second.keys() == latest.keys()
    assert all(torch.equal(latest[key], second[key]) for key in latest)
    adapted = "transformer.layers.0.attention.query_key_value.weight"
    assert not torch.equal(first[adapted], second[adapted])
    refused = cli(["merge-lora", "--from_pretrained", str(short_run.save_dir), "--save", str(tmp_path / "x"),
                    "--iteration", "7"])  # fmt: skip
    assert refused.returncode == 2
    assert "no iteration 7; saved iterations: ['1', '2']" in refused.stderr
    assert not (tmp_path / "x").exists()


def test_evaluate_writes_and_shows_its_predictions(short_run, small_captcha_data, tmp_path):
    predictions = tmp_path / "out" / "predictions.jsonl"
    result = run_cli(
        [
            "evaluate",
            "--from_pretrained",
            str(short_run.save_dir),
            "--data",
            str(small_captcha_data.root / "valid"),
        ]
        + ["--max_new_tokens", "4", "--limit", "3", "--predictions", str(predictions), "--show_predictions"]
    )
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [row["id"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert set(row) == {"id", "image", "query", "prediction", "reference", "correct"}
        assert row["query"] == "CAPTCHA:" and row["image"].startswith(str(small_captcha_data.root / "valid"))
        assert row["reference"] == row["image"].rsplit("/", 1)[1].split(".")[0]
        assert row["correct"] == (row["prediction"] == row["reference"])
    lines = result.stdout.strip().splitlines()
    shown = [line for line in lines if line.startswith("[")]
    assert [line.split("]")[0] for line in shown] == ["[1/3", "[2/3", "[3/3"]
    assert all(row["image"] in line for row, line in zip(rows, shown, strict=True))
    report = json.loads(lines[-1])
    assert report["samples"] == 3 and report["predictions"] == str(predictions)
    assert report["accuracy"] == pytest.approx(sum(row["correct"] for row in rows) / 3)


def test_resuming_with_another_tp_size_is_refused_before_anything_loads(short_run):
    args = finetune_args(short_run.save_dir.parent.parent, short_run.save_dir, *SHORT_RUN)
    args[args.index("--train_iters") + 1] = "3"
    result = cli([*args, "--nproc", "2", "--tp_size", "2"])
    assert result.returncode != 0
    message = f"{short_run.save_dir}/2 was saved with tensor-parallel size 1 x data-parallel 1 (1 processes)"
    assert (
        message in result.stderr
        and "this run has --tp_size 2 x data-parallel 1 (2 processes)" in result.stderr
    )
    assert "cogvlm merge-lora" in result.stderr and "cogvlm split" in result.stderr
    # Every rank refuses with the message (torchrun then reports the failed workers); DeepSpeed never ran.
    assert result.stderr.count("cogvlm finetune: error: ") == 2
    assert "AssertionError" not in result.stderr and "deepspeed/runtime" not in result.stderr
    assert (short_run.save_dir / "latest").read_text() == "2"


def test_a_bad_data_set_is_refused_before_the_first_step(tmp_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    Image.new("RGB", (40, 30), (0, 90, 200)).save(data / "img" / "a.png")
    Image.new("RGB", (40, 30), (0, 90, 200)).save(tmp_path / "outside.png")
    records = [("img/a.png", "1")] * 3 + [("img/missing.png", "1"), ("../outside.png", "11")]
    lines = [
        json.dumps({"image": image, "question": "CAPTCHA:", "answer": answer}) for image, answer in records
    ]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    save = tmp_path / "run"
    args = finetune_args(tmp_path, save, *SHORT_RUN)
    args[args.index("--train_data") + 1] = str(data / "train.jsonl")
    result = cli(args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"training data {data / 'train.jsonl'} (5 records): 2 problem(s):" in result.stderr
    assert f"train.jsonl:4: image {data / 'img' / 'missing.png'} not found" in result.stderr
    assert "train.jsonl:5: image" in result.stderr and "lies outside the data folder" in result.stderr
    assert not (save / "latest").exists() and not (save / "metrics.jsonl").exists()
    assert "trainable parameters" not in result.stderr  # refused before the model was even loaded


def test_evaluate_with_model_parallel_size_one_shares_the_samples_out_over_two_processes(
    short_run, small_captcha_data, tmp_path
):
    args = ["evaluate", "--from_pretrained", str(short_run.save_dir)]
    args += ["--test-data", str(small_captcha_data.root / "valid"), "--max_new_tokens", "4", "--limit", "5"]
    alone = run_cli([*args, "--predictions", str(tmp_path / "alone.jsonl")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "cogvlm.cli", *args, "--model-parallel-size", "1"]
    command += ["--predictions", str(tmp_path / "shared.jsonl")]
    shared = subprocess.run(
        command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert shared.returncode == 0, shared.stderr[-3000:]
    reports = [json.loads(result.stdout.strip().splitlines()[-1]) for result in (alone, shared)]
    assert len([line for line in shared.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 reports
    assert reports[0]["samples"] == reports[1]["samples"] == 5
    assert reports[0]["accuracy"] == reports[1]["accuracy"]
    assert reports[0]["loss"] == pytest.approx(reports[1]["loss"], abs=1e-5)
    rows = [(tmp_path / name).read_text().splitlines() for name in ("alone.jsonl", "shared.jsonl")]
    assert rows[0] == rows[1] and len(rows[0]) == 5
