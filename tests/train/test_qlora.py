"""QLoRA fine-tuning on CPU: an adapter trained on a frozen int8 / int4 base, adapter-only checkpoints that
name their base, resuming, evaluating and merging them, and tensor parallelism."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from cogvlm.checkpoints.loading import load_model, load_model_from_state_dict
from cogvlm.checkpoints.sat_format import load_sat_weights
from cogvlm.cli import main
from cogvlm.errors import CheckpointError, ConfigError
from cogvlm.mixins.lora import is_lora_parameter, lora_layers
from cogvlm.nn.quantized import QuantConfig, dequantize_, quantize_, set_fused_kernels
from cogvlm.parallel.groups import TensorParallel
from cogvlm.parallel.sharding import collect_shard_rules, shard_state_dict
from cogvlm.train.adapters import merge_lora_checkpoint
from cogvlm.train.checkpointing import load_finetuned_model
from cogvlm.train.evaluation import EvaluateConfig, run_evaluation
from cogvlm.train.metrics import read_metrics
from cogvlm.train.qlora import QLoraBase, check_resumable, check_same_base, fingerprint
from tests.golden_models import cases
from tests.train.conftest import FinishedRun, base_checkpoint, finetune_args, run_cli
from tests.train.test_adapters import COGVLM_DIR, _logits

TARGETS = ("language_attention", "vision_expert_attention", "language_mlp", "vision_attention")
OPTIONS = (
    "--fp32", "--zero_stage", "1", "--micro_batch_size", "4", "--lr", "1e-2", "--lora_alpha", "20",
    "--weight_decay", "0", "--lora_targets", *TARGETS,
)  # fmt: skip
INT8_STEPS = 8
MODEL_STATES = "mp_rank_00_model_states.pt"


def _losses(run) -> dict[int, float]:
    return {step: record["loss"] for step, record in read_metrics(run).items()}


def _final_evaluation(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith('{"final_evaluation"'))
    return json.loads(line)["final_evaluation"]


def _quantized_base(bits: int, group_size: int | None = None):
    model, _ = load_model(base_checkpoint())
    return quantize_(model, bits, group_size)


@pytest.fixture(scope="module")
def int8_run(small_captcha_data, tmp_path_factory) -> FinishedRun:
    """Eight steps of QLoRA on an int8 base (per-row scales), saved at 4 and 8, with a final evaluation."""
    save = tmp_path_factory.mktemp("qlora_int8") / "run"
    args = finetune_args(small_captcha_data.root, save, *OPTIONS, "--quant", "8")
    args += ["--train_iters", str(INT8_STEPS), "--save_interval", "4", "--eval_iters", "2"]
    args += ["--valid_data", str(small_captcha_data.root / "valid"), "--max_new_tokens", "4"]
    result = run_cli(args)
    return FinishedRun(save, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def int4_runs(small_captcha_data, tmp_path_factory) -> dict[int, FinishedRun]:
    """Three steps of QLoRA on an int4 base (groups of 16) in one process and on two tensor-parallel ranks."""
    root = tmp_path_factory.mktemp("qlora_int4")
    runs = {}
    for tp_size in (1, 2):
        save = root / f"tp{tp_size}"
        args = finetune_args(
            small_captcha_data.root, save, *OPTIONS, "--quant", "4", "--quant_group_size", "16"
        )
        args += ["--train_iters", "3", "--save_interval", "0"]
        if tp_size > 1:
            args += ["--nproc", str(tp_size), "--tp_size", str(tp_size)]
        result = run_cli(args)
        runs[tp_size] = FinishedRun(save, result.stdout, result.stderr)
    return runs


def test_int8_qlora_lowers_the_loss_and_trains_only_the_adapter(int8_run):
    losses = _losses(int8_run.save_dir)
    assert sorted(losses) == list(range(1, INT8_STEPS + 1))
    assert losses[INT8_STEPS] < losses[1] - 2.0, losses
    report = [line for line in int8_run.stderr.splitlines() if line.startswith("  ")]
    assert report and all(line.startswith("  lora:") for line in report), report
    assert {line.split(":")[1] for line in report} == set(TARGETS)
    assert "QLoRA: frozen base" in int8_run.stderr and "(int8, per row)" in int8_run.stderr


def test_int4_qlora_lowers_the_loss(int4_runs):
    losses = _losses(int4_runs[1].save_dir)
    assert losses[3] < losses[1] - 2.0, losses
    assert "(int4, groups of 16)" in int4_runs[1].stderr


def test_qlora_checkpoints_hold_the_adapter_alone_and_name_their_base(int8_run):
    module = load_sat_weights(int8_run.save_dir / str(INT8_STEPS) / MODEL_STATES)
    model, _, _ = load_finetuned_model(int8_run.save_dir)
    adapter_keys = {name for name, _ in model.named_parameters() if is_lora_parameter(name)}
    assert set(module) == adapter_keys
    adapter_bytes = sum(value.numel() * value.element_size() for value in module.values())
    quantized_bytes = sum(v.numel() * v.element_size() for v in _quantized_base(8).state_dict().values())
    # DeepSpeed adds ~20 kB of metadata (names and shapes); the 250 kB quantized base is not there.
    assert (int8_run.save_dir / str(INT8_STEPS) / MODEL_STATES).stat().st_size < adapter_bytes + 32_000
    assert adapter_bytes + 32_000 < quantized_bytes
    raw = json.loads((int8_run.save_dir / "model_config.json").read_text())
    record = QLoraBase.from_model_config(raw, "model_config.json")
    assert record.base_path == str(base_checkpoint().resolve())
    assert record.quantization == QuantConfig(8, None)
    assert record.fingerprints == (fingerprint(_quantized_base(8).state_dict()),)


def test_the_reloaded_qlora_model_reproduces_the_runs_final_evaluation(int8_run, small_captcha_data):
    # Evaluated at the end of training on the live engine, and again here on a freshly quantized base
    # with the saved adapter: equal losses mean training left the quantized base untouched.
    config = EvaluateConfig(
        from_pretrained=str(int8_run.save_dir),
        data_path=str(small_captcha_data.root / "valid"),
        max_new_tokens=4,
        batch_size=4,
        limit=8,
    )
    result, _, _ = run_evaluation(config)
    final = _final_evaluation(int8_run.stdout)
    assert result.samples == final["samples"] == 8
    # Same weights, batches and float32 kernels: equal to rounding.
    assert result.loss == pytest.approx(final["loss"], abs=1e-6)


@pytest.fixture(scope="module")
def merged_int8(int8_run, tmp_path_factory):
    """The int8 run merged by `cogvlm merge-lora` (onto the dequantized base, the default)."""
    merged = tmp_path_factory.mktemp("qlora_merged") / "merged"
    run_cli(["merge-lora", "--from_pretrained", str(int8_run.save_dir), "--save", str(merged)])
    return merged


@pytest.mark.parametrize("case", sorted(cases(COGVLM_DIR))[:2])
def test_merging_gives_a_float_checkpoint_with_the_qlora_models_logits(int8_run, merged_int8, case):
    qlora, _, _ = load_finetuned_model(int8_run.save_dir)
    merged, _ = load_model(merged_int8)  # a plain SAT checkpoint: the strict loader accepts it
    state = merged.state_dict()
    assert set(state) == set(load_model(base_checkpoint())[0].state_dict())
    assert all(value.dtype == torch.float32 for value in state.values())
    assert "qlora" not in json.loads((merged_int8 / "model_config.json").read_text())
    # The float32 dequantize-matmul, not the bfloat16 CPU kernels inference uses (tests/nn bounds them).
    qlora_logits = _logits(set_fused_kernels(qlora, enabled=False), case)
    assert not torch.allclose(qlora_logits, _logits(_quantized_base(8), case), atol=1e-2)
    # W_deq + BA formed once in float32, against (x q^T) s + (x A^T) B^T: rounding on |logits| < 10
    # (measured 5e-6).
    torch.testing.assert_close(_logits(merged, case), qlora_logits, atol=2e-5, rtol=0)


def test_merging_onto_the_original_base_adds_the_same_update_to_the_float_weights(
    int8_run, merged_int8, tmp_path
):
    onto_original = merge_lora_checkpoint(int8_run.save_dir, tmp_path / "original", onto="original")
    original_weights = load_model(onto_original)[0].state_dict()
    dequantized_weights = load_model(merged_int8)[0].state_dict()
    base = load_model(base_checkpoint())[0].state_dict()
    dequantized_base = dequantize_(_quantized_base(8)).state_dict()
    qlora, _, _ = load_finetuned_model(int8_run.save_dir)
    for path in lora_layers(qlora):
        key = f"{path}.weight"
        # The same float32 update on two bases: equal up to rounding of weights of size ~0.1.
        torch.testing.assert_close(
            original_weights[key] - base[key],
            dequantized_weights[key] - dequantized_base[key],
            atol=1e-6,
            rtol=0,
        )
    for key in set(base) - {f"{path}.weight" for path in lora_layers(qlora)}:
        assert torch.equal(original_weights[key], base[key]), key
    # Off the trained model by int8's quantization error (0.135 measured on the base; bound 0.25).
    case = sorted(cases(COGVLM_DIR))[0]
    difference = (_logits(load_model(onto_original)[0], case) - _logits(qlora, case)).abs().max()
    assert 1e-3 < float(difference) < 0.25


def test_a_resumed_qlora_run_repeats_the_uninterrupted_losses(int8_run, small_captcha_data, tmp_path):
    # Resume from iteration 4 of a copy: the base is loaded and quantized again, the adapter and the
    # optimizer come from the checkpoint; float32, one thread, so the losses must be bit-identical.
    resumed = tmp_path / "run"
    shutil.copytree(int8_run.save_dir, resumed)
    shutil.rmtree(resumed / str(INT8_STEPS))
    (resumed / "latest").write_text("4")
    metrics = (resumed / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in metrics if json.loads(line)["step"] <= 4 and json.loads(line)["kind"] == "train"]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    args = finetune_args(small_captcha_data.root, resumed, *OPTIONS, "--quant", "8")
    result = run_cli(args + ["--train_iters", str(INT8_STEPS), "--save_interval", "4"])
    assert re.search(r"resumed from \S+/4\b", result.stderr), result.stderr[-3000:]
    assert _losses(resumed) == _losses(int8_run.save_dir)


def test_tensor_parallel_qlora_repeats_the_single_process_run_and_merges_to_the_same_weights(
    int4_runs, tmp_path
):
    single, parallel = int4_runs[1].save_dir, int4_runs[2].save_dir
    assert sorted(p.name for p in (parallel / "3").glob("mp_rank_*")) == [
        "mp_rank_00_model_states.pt",
        "mp_rank_01_model_states.pt",
    ]
    record = QLoraBase.from_model_config(json.loads((parallel / "model_config.json").read_text()), "")
    assert len(record.fingerprints) == 2
    # Sharded matmuls sum in another order: ~1e-6 relative, compounded over 3 steps at lr 1e-2.
    assert _losses(parallel) == pytest.approx(_losses(single), abs=1e-4)
    merged = {}
    for run in (single, parallel):
        destination = merge_lora_checkpoint(run, tmp_path / run.name)
        merged[run.name] = load_sat_weights(destination / "1" / MODEL_STATES)
    assert sorted(merged["tp1"]) == sorted(merged["tp2"])
    for key, value in merged["tp1"].items():
        torch.testing.assert_close(merged["tp2"][key], value, atol=1e-5, rtol=0, msg=key)


def test_fingerprints_are_the_same_whether_the_base_is_quantized_whole_or_in_shards():
    whole = _quantized_base(4, 16)
    rules = collect_shard_rules(whole)
    state = load_model(base_checkpoint())[0].state_dict()
    config = whole.config
    shards = []
    for rank in range(2):
        # Groups of 16 never need the all-reduce that per-row scales of row-parallel layers do.
        tp = TensorParallel(group="no collectives are needed", rank=rank, size=2)
        piece = shard_state_dict(state, rules, rank, 2)
        shards.append(quantize_(load_model_from_state_dict(config, piece, "shard", tp=tp), 4, 16))
    record = QLoraBase(
        "base", "/base", QuantConfig(4, 16), tuple(fingerprint(s.state_dict()) for s in shards)
    )
    assert check_same_base(record, whole, tp_rank=0, tp_size=1, source="run")
    assert check_same_base(record, shards[1], tp_rank=1, tp_size=2, source="run")
    assert not check_same_base(record, whole, tp_rank=0, tp_size=4, source="run")  # nothing to compare


def test_a_changed_base_is_refused():
    model = _quantized_base(8)
    record = QLoraBase("base", "/base", QuantConfig(8), (fingerprint(model.state_dict()),))
    with torch.no_grad():
        model.transformer.layers[0].attention.dense.weight[0, 0] += 1
    with pytest.raises(
        CheckpointError, match=r"differs from the one this adapter was trained on .* rank\(s\) \[0\]"
    ):
        check_same_base(record, model, tp_rank=0, tp_size=1, source="run")


def test_resuming_with_another_quantization_or_without_it_is_refused():
    saved = QLoraBase("base", "/base", QuantConfig(8), ("a",))
    with pytest.raises(ConfigError, match="saved with quantization int8, per row, now int4, groups of 32"):
        check_resumable(saved, QLoraBase("base", "/base", QuantConfig(4, 32), ("a",)), "run")
    with pytest.raises(ConfigError, match="the run was saved with --quant 8; resume it with the same"):
        check_resumable(saved, None, "run")
    with pytest.raises(ConfigError, match="the run was saved without"):
        check_resumable(None, saved, "run")
    with pytest.raises(ConfigError, match="saved with tp_size 1, now 2; resume with the same layout"):
        check_resumable(saved, QLoraBase("base", "/base", QuantConfig(8), ("a", "b")), "run")
    with pytest.raises(ConfigError, match="quantizes to other weights than the run's base"):
        check_resumable(saved, QLoraBase("other", "/other", QuantConfig(8), ("b",)), "run")
    check_resumable(saved, saved, "run")


def test_a_moved_base_is_named_and_can_be_given_explicitly(int8_run, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(int8_run.save_dir, moved, ignore=shutil.ignore_patterns("4", "tensorboard"))
    raw = json.loads((moved / "model_config.json").read_text())
    raw["qlora"].update(base=str(tmp_path / "gone"), base_path=str(tmp_path / "gone"))
    (moved / "model_config.json").write_text(json.dumps(raw))
    with pytest.raises(FileNotFoundError, match=r"the QLoRA base .*gone .* is not available .* --base"):
        load_finetuned_model(moved)
    model, _, _ = load_finetuned_model(moved, base=str(base_checkpoint()))
    assert lora_layers(model)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--quant", "8", "--full"], r"--quant 8\) trains a LoRA adapter .* combined with no LoRA adapter"),
        (
            ["--quant", "4", "--no_lora", "--train_params", "x*"],
            r"with no LoRA adapter .* and train_patterns",
        ),
        (["--quant", "8", "--train_params", "transformer.*"], r"cannot be combined with train_patterns"),
        (["--quant_group_size", "32"], r"--quant_group_size needs --quant 4 or --quant 8"),
    ],
)
def test_quant_is_refused_for_anything_but_lora_only_training(flags, message, tmp_path, capsys):
    args = ["finetune", "--from_pretrained", str(base_checkpoint()), "--train_data", str(tmp_path)]
    assert main([*args, "--save", str(tmp_path / "run"), "--train_iters", "1", *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cogvlm finetune: error:") and len(error.splitlines()) == 1
    assert re.search(message, error), error
    assert not (tmp_path / "run").exists()
