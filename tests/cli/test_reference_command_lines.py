"""The reference's own command lines (tests/cli/fixtures) parse, and mean what they meant there.

`.args` files hold one command line spread over lines (the fine-tune, evaluate and merge scripts);
`.lines` files hold one command line per line (the demos). `#` starts a comment line.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from cogvlm.cli import build_parser, finetune_config_from_args, main
from cogvlm.cli.chat import _query
from cogvlm.cli.common import flag_dtype
from cogvlm.cli.reference_flags import inert_notes
from cogvlm.cli.training import evaluate_config_from_args
from cogvlm.errors import ConfigError
from tests.train.test_config import REFERENCE_JSON

FIXTURES = Path(__file__).parent / "fixtures"


def _lines(name: str) -> list[list[str]]:
    text = (FIXTURES / name).read_text()
    return [shlex.split(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _argv(name: str) -> list[str]:
    return [token for line in _lines(name) for token in line]


@pytest.fixture
def in_script_folder(tmp_path, monkeypatch):
    """The reference scripts' working directory: scripts/test_config_bf16.json beside them."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "test_config_bf16.json").write_text(json.dumps(REFERENCE_JSON))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("fixture", "model", "max_length"),
    [
        ("finetune_cogvlm_lora.args", "cogvlm-base-490", 1288),
        ("finetune_cogagent_lora.args", "cogagent-chat", 319),
    ],
)
def test_the_reference_finetune_scripts_parse_to_their_settings(in_script_folder, fixture, model, max_length):
    args = build_parser().parse_args(["finetune", *_argv(fixture)])
    config = finetune_config_from_args(args)
    assert config.from_pretrained == model and config.local_tokenizer == "lmsys/vicuna-7b-v1.5"
    # SAT saves into --save/<experiment-name>-<timestamp>; here the name is kept so a rerun resumes.
    assert Path(config.save_dir) == Path("checkpoints") / f"finetune-{model}"
    assert config.train_iters == 800 and config.tp_size == 1 and config.seed == 2023
    data = config.data
    assert (data.train_path, data.valid_path, data.test_path) == (
        "./archive_split/train",
        "./archive_split/valid",
        None,
    )
    assert data.version == "base" and data.max_length == max_length
    assert config.lora is not None and config.lora.rank == 10
    assert config.schedule.warmup_ratio == 0.02 and config.schedule.decay_style == "cosine"
    assert config.checkpoint_activations and config.vision_checkpoint_activations
    assert (config.save_interval, config.eval_interval, config.eval_iters) == (200, 200, 10)
    assert config.eval_batch_size == 1 and not config.strict_eval
    assert config.distributed_backend == "nccl"
    # From test_config_bf16.json.
    assert config.precision == "bf16" and config.micro_batch_size == 4 and config.zero_stage == 2
    assert config.optimizer.lr == 1e-5 and config.gradient_clipping == 0.1
    assert inert_notes(args, "finetune") == []  # every flag of the script has its meaning here


@pytest.mark.parametrize(
    ("fixture", "checkpoint", "version", "max_length"),
    [
        ("evaluate_cogvlm.args", "./checkpoints/merged_lora", "base", 1288),
        ("evaluate_cogagent.args", "./checkpoints/ft_cogagent_model", "chat", 400),
    ],
)
def test_the_reference_evaluate_scripts_parse_to_their_settings(
    in_script_folder, fixture, checkpoint, version, max_length
):
    args = build_parser().parse_args(["evaluate", *_argv(fixture)])
    config = evaluate_config_from_args(args)
    assert config.from_pretrained == checkpoint and config.data_path == "./archive_split/test"
    assert config.version == version and config.max_length == max_length
    assert config.local_tokenizer == "lmsys/vicuna-7b-v1.5"
    assert config.batch_size == 1  # --eval-batch-size
    assert config.limit is None  # --strict-eval: the whole split
    assert config.dtype == torch.bfloat16  # the DeepSpeed JSON's precision, as the reference evaluates
    assert args.nproc == 1 and config.tp_size == 1  # --model-parallel-size: 1 rank per model
    notes = inert_notes(args, "evaluate")
    noted = {note.split(": note: ")[1].split(" ")[0] for note in notes}
    expected = {
        "--experiment-name", "--resume-dataloader", "--train-data", "--distributed-backend",
        "--lr-decay-style", "--warmup", "--checkpoint-activations", "--save-interval", "--eval-interval",
        "--save", "--split",
    }  # fmt: skip
    if fixture == "evaluate_cogvlm.args":
        expected |= {"--lora_rank", "--use_lora"}
    assert noted == expected
    assert all(note.startswith("cogvlm evaluate: note: ") and "\n" not in note for note in notes)


def test_evaluate_without_strict_eval_scores_eval_iters_batches(in_script_folder):
    argv = [arg for arg in _argv("evaluate_cogvlm.args") if arg != "--strict-eval"]
    args = build_parser().parse_args(["evaluate", *argv, "--eval-iters", "3", "--eval-batch-size", "2"])
    assert evaluate_config_from_args(args).limit == 6
    args = build_parser().parse_args(["evaluate", *argv, "--train-iters", "5"])
    with pytest.raises(ValueError, match="--train-iters 5: evaluate trains nothing"):
        evaluate_config_from_args(args)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "949,50,1"], "--split 949,50,1: carving validation or test samples"),
        (["--use_ptuning"], "P-tuning v2 is not implemented"),
        (["--use_qlora", "--quant", "8"], "--use_qlora is the reference's 4-bit QLoRA"),
    ],
)
def test_reference_finetune_flags_without_an_equivalent_are_refused(in_script_folder, extra, message):
    args = build_parser().parse_args(["finetune", *_argv("finetune_cogvlm_lora.args"), *extra])
    with pytest.raises(ConfigError, match=message):
        finetune_config_from_args(args)


def test_reference_finetune_flags_that_change_the_run(in_script_folder):
    extra = ["--use_qlora", "--strict-eval", "--test-data", "t", "--model-parallel-size", "2"]
    args = build_parser().parse_args(["finetune", *_argv("finetune_cogvlm_lora.args"), *extra])
    config = finetune_config_from_args(args)
    assert config.quantization.bits == 4 and config.strict_eval and config.data.test_path == "t"
    assert config.tp_size == 2
    with pytest.raises(SystemExit):  # SAT's other modes: argparse names the one choice
        build_parser().parse_args(["finetune", *_argv("finetune_cogvlm_lora.args"), "--mode", "pretrain"])


def test_the_merge_model_command_line_merges_to_the_reference_folder(in_script_folder, capsys):
    from cogvlm.checkpoints.model_parallel import split_checkpoint
    from cogvlm.checkpoints.sat_format import load_sat_weights, open_sat_checkpoint
    from tests.train.conftest import base_checkpoint

    argv = _argv("merge_model.args")
    args = build_parser().parse_args(["merge", *argv])
    assert args.from_pretrained == "./checkpoints/merged_lora_490" and flag_dtype(args) == torch.bfloat16
    assert [note.split(": note: ")[1].split(" ")[0] for note in inert_notes(args, "merge")] == ["--version"]

    split_checkpoint(base_checkpoint(), in_script_folder / "checkpoints" / "merged_lora_490", 2)
    assert main(["merge", *argv]) == 0
    image_px = json.loads((base_checkpoint() / "model_config.json").read_text())["eva_args"]["image_size"][0]
    merged = in_script_folder / "checkpoints" / f"merged_model_{image_px}"
    assert capsys.readouterr().out.strip() == str(Path("checkpoints") / f"merged_model_{image_px}")
    checkpoint = open_sat_checkpoint(merged)
    assert checkpoint.model_parallel_size == 1
    weights = load_sat_weights(checkpoint.weight_files[0])
    original = load_sat_weights(open_sat_checkpoint(base_checkpoint()).weight_files[0])
    assert weights.keys() == original.keys()
    for key, tensor in original.items():
        expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        assert torch.equal(weights[key], expected), key


def test_merge_under_torchrun_leaves_the_work_to_rank_zero(in_script_folder, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert main(["merge", *_argv("merge_model.args")]) == 0
    assert "rank 1 has nothing to do" in capsys.readouterr().err
    assert not (in_script_folder / "checkpoints").exists()


@pytest.mark.parametrize("fixture", ["cli_demo_sat.lines", "cli_demo_hf.lines", "cli_demo.lines"])
def test_the_reference_demo_command_lines_parse_to_their_settings(fixture):
    for line in _lines(fixture):
        args = build_parser().parse_args(["chat", *line])
        given = dict(zip(line[::1], line[1::1], strict=False))
        assert args.from_pretrained == given["--from_pretrained"]
        assert args.version == given.get("--version")
        assert args.bf16 == ("--bf16" in line) and args.fp16 == ("--fp16" in line)
        assert args.stream_chat == ("--stream_chat" in line) and args.chinese == ("--chinese" in line)
        assert args.english == ("--english" in line) and args.no_prompt == ("--no_prompt" in line)
        assert args.quant == (int(given["--quant"]) if "--quant" in line else None)
        for flag, name, kind in (("--top_p", "top_p", float), ("--top_k", "top_k", int)):
            assert getattr(args, name) == (kind(given[flag]) if flag in line else None)


def test_no_prompt_asks_about_the_image_alone(capsys):
    line = _lines("cli_demo.lines")[0]
    assert "--no_prompt" in line
    assert _query(build_parser().parse_args(["chat", *line, "--image", "a.png"])) == ""
    assert _query(build_parser().parse_args(["chat", *line, "--image", "a.png", "--query", "q"])) == "q"
    assert _query(build_parser().parse_args(["chat", *line])) is None
    assert "--no_prompt applies to an --image" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--english and --chinese"):
        _query(build_parser().parse_args(["chat", *line, "--chinese"]))
