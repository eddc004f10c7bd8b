"""Shared pieces of the fine-tuning tests: captcha data, and real `cogvlm finetune` runs in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.golden import golden_dir
from tests.train.captcha_set import COUNT_LABELS, write_captcha_split

REPO = Path(__file__).resolve().parents[2]
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def base_checkpoint() -> Path:
    """The golden tiny CogVLM (random weights) that every run starts from."""
    return golden_dir() / "cogvlm" / "sat_checkpoint"


def subprocess_env() -> dict[str, str]:
    """One thread per process (fixed thread count: bit-reproducible float32), this checkout on the path."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return env


def finetune_args(data: Path, save: Path, *extra: str) -> list[str]:
    """`cogvlm finetune` arguments common to every test run."""
    return [
        "finetune",
        "--from_pretrained", str(base_checkpoint()),
        "--local_tokenizer", str(golden_dir() / "tokenizer.model"),
        "--train_data", str(data / "train"),
        "--save", str(save),
        "--no_progress_bar",
        *extra,
    ]  # fmt: skip


def cli(args: list[str], timeout_s: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m cogvlm.cli ARGS` from the repository root; its result, whatever its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "cogvlm.cli", *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
    )


def run_cli(args: list[str], timeout_s: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m cogvlm.cli ARGS`; fail the test with its output if it does not exit 0."""
    result = cli(args, timeout_s)
    if result.returncode != 0:
        pytest.fail(
            f"cogvlm {args[0]} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


@dataclass(frozen=True)
class CaptchaData:
    """A captcha set split into train/ and valid/ folders."""

    root: Path
    labels: tuple[str, ...]

    @property
    def chance(self) -> float:
        """Exact-match accuracy of guessing uniformly among the labels."""
        return 1.0 / len(self.labels)


@pytest.fixture(scope="session")
def captcha_data(tmp_path_factory) -> CaptchaData:
    """256 training and 64 validation captchas, labels "1" .. "1111"."""
    root = tmp_path_factory.mktemp("captcha")
    write_captcha_split(root / "train", COUNT_LABELS, 256, seed=7)
    write_captcha_split(root / "valid", COUNT_LABELS, 64, seed=8)
    return CaptchaData(root, COUNT_LABELS)


@pytest.fixture(scope="session")
def small_captcha_data(tmp_path_factory) -> CaptchaData:
    """32 training captchas, for runs that test mechanics rather than learning."""
    root = tmp_path_factory.mktemp("captcha_small")
    write_captcha_split(root / "train", COUNT_LABELS, 32, seed=11)
    write_captcha_split(root / "valid", COUNT_LABELS, 8, seed=12)
    return CaptchaData(root, COUNT_LABELS)


LEARNING_TARGETS = (
    "language_attention",
    "vision_attention",
    "vision_expert_attention",
    "language_mlp",
    "vision_expert_mlp",
)
# Found by a small sweep: LoRA rank 8 / alpha 16 on every attention and MLP of both experts and the
# EVA tower, AdamW 3e-3 without weight decay, 200 steps of 16 samples, float32.
LEARNING_ARGS = (
    "--fp32", "--zero_stage", "1", "--micro_batch_size", "16", "--train_iters", "200", "--lr", "3e-3",
    "--weight_decay", "0", "--gradient_clipping", "1.0", "--lora_rank", "8", "--lora_alpha", "16",
    "--lora_targets", *LEARNING_TARGETS, "--save_interval", "100", "--eval_iters", "4",
    "--max_new_tokens", "8",
)  # fmt: skip


@dataclass(frozen=True)
class FinishedRun:
    """A completed `cogvlm finetune` run: its directory and captured output."""

    save_dir: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def lora_run(captcha_data, tmp_path_factory) -> FinishedRun:
    """The LoRA run on the captcha set, shared by the tests that inspect its results."""
    save = tmp_path_factory.mktemp("lora_run") / "run"
    args = finetune_args(
        captcha_data.root, save, "--valid_data", str(captcha_data.root / "valid"), *LEARNING_ARGS
    )
    result = run_cli(args, timeout_s=600)
    return FinishedRun(save, result.stdout, result.stderr)
