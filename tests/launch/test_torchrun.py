"""`cogvlm ... --nproc N` re-executes itself under torchrun; the answer is the MP=1 answer, printed once."""

from __future__ import annotations

import subprocess
import sys

from cogvlm.launch.distributed import read_launch_environment
from cogvlm.launch.torchrun import is_torchrun_worker, torchrun_command, without_option
from tests.golden import find_case, generations, golden_dir, prompts
from tests.parallel.torchrun_jobs import environment


def test_nproc_is_removed_before_relaunching():
    args = ["chat", "--nproc", "2", "--query", "hi", "--nproc=4", "--image", "x.png"]
    assert without_option(args, "--nproc") == ["chat", "--query", "hi", "--image", "x.png"]


def test_torchrun_command_fails_fast_when_a_rank_dies():
    command = torchrun_command(4, ["chat", "--query", "hi"])
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in command and "--max-restarts=0" in command
    assert command[-5:] == ["-m", "cogvlm.cli", "chat", "--query", "hi"]


def test_worker_detection_and_launch_environment():
    assert is_torchrun_worker({"LOCAL_RANK": "1"})
    assert not is_torchrun_worker({})
    env = read_launch_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_distributed) == (3, 4, 1, True)


def test_cli_chat_on_two_ranks_prints_the_reference_answer_once():
    model_dir = golden_dir() / "cogvlm"
    name = find_case(
        model_dir,
        "of version chat_old without a history",
        lambda p, _: p["version"] == "chat_old" and not p["history"],
    )
    prompt, expected = prompts(model_dir)[name], generations(model_dir)[name]
    env = environment()
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cogvlm.cli",
            "chat",
            "--nproc",
            "2",
            "--from_pretrained",
            str(golden_dir() / "cogvlm" / "sat_checkpoint"),
            "--local_tokenizer",
            str(golden_dir() / "tokenizer.model"),
            "--version",
            prompt["version"],
            "--image",
            str(golden_dir() / "test_image.png"),
            "--query",
            prompt["query"],
            "--max_length",
            str(len(prompt["input_ids"]) + expected["max_new_tokens"]),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [expected["response_after_official_postprocess"]]
