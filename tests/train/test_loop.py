"""Real fine-tuning runs on CPU: LoRA learns the captcha set, full fine-tuning trains every weight,
and a run killed mid-way and resumed repeats the uninterrupted run's losses exactly."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from cogvlm.checkpoints.sat_format import load_sat_weights
from cogvlm.train.evaluation import EvaluateConfig, run_evaluation
from cogvlm.train.metrics import read_metrics
from tests.train.conftest import (
    LEARNING_TARGETS,
    REPO,
    base_checkpoint,
    finetune_args,
    run_cli,
    subprocess_env,
)


def _final_evaluation(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith('{"final_evaluation"')]
    assert lines, f"no final evaluation printed:\n{stdout}"
    return json.loads(lines[-1])["final_evaluation"]


def test_lora_finetuning_lowers_the_loss_and_beats_chance(lora_run, captcha_data):
    losses = [record["loss"] for _, record in sorted(read_metrics(lora_run.save_dir).items())]
    assert len(losses) == 200
    first, last = losses[0], sum(losses[-20:]) / 20
    assert last < first / 4, f"loss {first:.3f} -> {last:.3f}"
    final = _final_evaluation(lora_run.stdout)
    assert final["samples"] == 64
    # Chance is 1/4 (16 of 64); 24 or more correct by guessing has probability ~2%.
    assert final["accuracy"] >= captcha_data.chance + 0.125, final


def test_the_untrained_model_is_at_or_below_chance(captcha_data):
    config = EvaluateConfig(
        from_pretrained=str(base_checkpoint()),
        data_path=str(captcha_data.root / "valid"),
        local_tokenizer=str(base_checkpoint().parent.parent / "tokenizer.model"),
        version="base",
        max_new_tokens=8,
        batch_size=16,
        limit=16,
    )
    result, skipped, _ = run_evaluation(config)
    assert result.samples == 16 and not skipped
    assert result.accuracy <= captcha_data.chance


def test_the_trainable_report_names_exactly_the_chosen_lora_targets(lora_run):
    reported = {line.split(":")[1] for line in lora_run.stderr.splitlines() if line.startswith("  lora:")}
    assert reported == set(LEARNING_TARGETS)
    assert "trainable parameters: 38,912 of 397,536" in lora_run.stderr


def test_evaluate_command_reproduces_the_runs_final_accuracy(lora_run, captcha_data, tmp_path):
    result = run_cli(
        ["evaluate", "--from_pretrained", str(lora_run.save_dir), "--data", str(captcha_data.root / "valid")]
        + ["--max_new_tokens", "8", "--batch_size", "16", "--predictions", str(tmp_path / "p.jsonl")]
    )
    scored = json.loads(result.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == scored["samples"] == 64
    assert sum(row["correct"] for row in rows) / 64 == scored["accuracy"]
    final = _final_evaluation(lora_run.stdout)
    assert scored["accuracy"] == final["accuracy"]
    assert scored["accuracy_ignore_case"] == final["accuracy_ignore_case"]
    # Same weights, batches and float32 kernels: the loss agrees to rounding.
    assert scored["loss"] == pytest.approx(final["loss"], abs=1e-5)


def test_full_finetuning_trains_every_weight_in_bf16_with_zero2(small_captcha_data, tmp_path):
    save = tmp_path / "full"
    args = finetune_args(small_captcha_data.root, save, "--full", "--bf16", "--zero_stage", "2")
    args += ["--micro_batch_size", "4", "--train_iters", "6", "--lr", "1e-3", "--save_interval", "0"]
    args += [
        "--checkpoint_activations",
        "--vision_checkpoint_activations",
        "--gradient_accumulation_steps",
        "2",
    ]
    result = run_cli(args)
    losses = [record["loss"] for _, record in sorted(read_metrics(save).items())]
    assert len(losses) == 6 and losses[-1] < losses[0] / 2, losses
    assert "trainable parameters: 358,624 of 358,624 (100.000%)" in result.stderr
    base = load_sat_weights(base_checkpoint() / "1" / "mp_rank_00_model_states.pt")
    tuned = load_sat_weights(save / "6" / "mp_rank_00_model_states.pt")
    assert sorted(tuned) == sorted(base)
    # The last layer's vision-expert output projection and MLP only change image-token outputs, which
    # no later layer reads and no label scores: they get no gradient, and nothing else may stay put.
    without_gradient = {
        "mixins.rotary.vision_dense_list.1.weight",
        "mixins.mlp.vision_dense_h_to_4h_list.1.weight",
        "mixins.mlp.vision_dense_4h_to_h_list.1.weight",
        "mixins.mlp.vision_gate_proj.1.weight",
    }
    unchanged = {
        key
        for key, value in base.items()
        if torch.equal(tuned[key].float(), value.to(torch.bfloat16).float())
    }
    assert unchanged == without_gradient


def _torchrun(args: list[str], **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "cogvlm.cli", *args]
    return subprocess.Popen(command, env=subprocess_env(), cwd=REPO, text=True, **popen)


def _run_to_end(args: list[str]) -> str:
    process = _torchrun(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-6000:]
    return output


def _kill_after_checkpoint(args: list[str], save, iteration: int) -> None:
    process = _torchrun(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not (save / "latest").is_file() or (save / "latest").read_text() != str(iteration):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        # torchrun's workers run in sessions of their own: kill the whole tree, workers first.
        tree = psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signal.SIGKILL)
        process.wait()
        psutil.wait_procs(tree, timeout=30)


def test_a_killed_and_resumed_two_process_run_repeats_the_uninterrupted_losses(small_captcha_data, tmp_path):
    # Two data-parallel ranks over gloo, ZeRO-1 in float32, one thread per process: the arithmetic is
    # the same in both runs, so the losses must be bit-identical, not merely close.
    options = ["--fp32", "--zero_stage", "1", "--micro_batch_size", "4", "--train_iters", "12"]
    options += [
        "--save_interval",
        "4",
        "--lr",
        "1e-3",
        "--lora_dropout",
        "0.1",
        "--gradient_accumulation_steps",
        "2",
    ]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _run_to_end(finetune_args(small_captcha_data.root, whole, *options))
    _kill_after_checkpoint(finetune_args(small_captcha_data.root, broken, *options), broken, 4)
    killed_steps = set(read_metrics(broken))
    assert max(killed_steps) < 12
    output = _run_to_end(finetune_args(small_captcha_data.root, broken, *options))
    resumed = re.search(r"resumed from \S+/(\d+)", output)
    assert resumed and int(resumed.group(1)) in (4, 8), output[-3000:]
    expected = {step: record["loss"] for step, record in read_metrics(whole).items()}
    actual = {step: record["loss"] for step, record in read_metrics(broken).items()}
    assert sorted(actual) == list(range(1, 13))
    assert actual == expected


def test_tensor_parallel_training_repeats_the_single_process_run_and_merges_to_the_same_weights(
    small_captcha_data, tmp_path
):
    # Gradient clipping (0.1) is active every step, so the global norm must count each replicated
    # parameter once across the tensor-parallel ranks (the mpu adapter's job) for the runs to agree.
    options = ["--fp32", "--zero_stage", "1", "--micro_batch_size", "4", "--train_iters", "3"]
    options += ["--save_interval", "0", "--lr", "1e-2", "--lora_alpha", "20"]
    options += [
        "--lora_targets",
        "language_attention",
        "vision_expert_attention",
        "language_mlp",
        "vision_attention",
    ]
    single, parallel = tmp_path / "tp1", tmp_path / "tp2"
    run_cli(finetune_args(small_captcha_data.root, single, *options))
    _run_to_end(finetune_args(small_captcha_data.root, parallel, *options, "--tp_size", "2"))
    assert sorted(p.name for p in (parallel / "3").glob("mp_rank_*")) == [
        "mp_rank_00_model_states.pt",
        "mp_rank_01_model_states.pt",
    ]
    expected = {step: record["loss"] for step, record in read_metrics(single).items()}
    actual = {step: record["loss"] for step, record in read_metrics(parallel).items()}
    assert expected[3] < expected[1] - 1.0
    # Sharded matmuls sum partial products in another order: float32 rounding (~1e-6 relative after one
    # step), compounded by lr 1e-2 over 3 steps to ~1e-5 absolute on losses of ~5.
    assert actual == pytest.approx(expected, abs=1e-4)
    for run in (single, parallel):
        run_cli(
            ["merge-lora", "--from_pretrained", str(run), "--save", str(run.parent / f"{run.name}-merged")]
        )
    merged_single = load_sat_weights(tmp_path / "tp1-merged" / "1" / "mp_rank_00_model_states.pt")
    merged_parallel = load_sat_weights(tmp_path / "tp2-merged" / "1" / "mp_rank_00_model_states.pt")
    assert sorted(merged_parallel) == sorted(merged_single)
    for key, value in merged_single.items():
        torch.testing.assert_close(merged_parallel[key], value, atol=1e-4, rtol=1e-4, msg=key)
