"""Streaming loads: the same model as loading whole and quantizing after, with bounded device and host use."""

from __future__ import annotations

import contextlib
import json
import warnings
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cogvlm.checkpoints.convert import ConvertConfig, convert_checkpoint
from cogvlm.checkpoints.loading import (
    build_model,
    load_model,
    load_weights,
    open_checkpoint,
    plan_model_load,
    read_checkpoint,
    reset_computed_buffers,
)
from cogvlm.checkpoints.streaming import stream_weights
from cogvlm.errors import CheckpointError
from cogvlm.nn.quantized import QuantConfig, is_quantized, quantize_
from cogvlm.parallel.groups import NO_PARALLEL
from tests.golden import golden_dir, golden_splits
from tests.golden_models import case_logits, checkpoint_dirs, require_builder

QUANTS = [None, QuantConfig(8), QuantConfig(4, 16)]


def _sources() -> list[tuple[str, str]]:
    """(id, kind) of every source: golden SAT MP=1, the reference's MP=N splits, and HF made from SAT."""
    found = [(d.name, "sat") for d in checkpoint_dirs()]
    found += [(split.name, "split") for split, _, _ in golden_splits()]
    return found + [(d.name, "hf") for d in checkpoint_dirs()]


def _checkpoint(name: str, kind: str, tmp_path_factory):
    if kind == "split":
        split, model_dir, _ = next(item for item in golden_splits() if item[0].name == name)
        return split, model_dir
    model_dir = golden_dir() / name
    if kind == "sat":
        return model_dir / "sat_checkpoint", model_dir
    output = tmp_path_factory.mktemp("hf") / name
    convert_checkpoint(ConvertConfig(model_dir / "sat_checkpoint", output, max_shard_bytes=300_000))
    return output, model_dir


def _quantized_after_load(path, quant):
    """The previous path: the whole float model on the device first, quantized afterwards."""
    info, state = read_checkpoint(path)
    model = build_model(info.config, device="meta")
    model.to(torch.float32)
    model.to_empty(device="cpu")
    reset_computed_buffers(model)
    load_weights(model, state, str(path))
    return quantize_(model.eval(), quant.bits, quant.group_size) if quant else model.eval()


def _assert_same_state(left, right):
    left, right = left.state_dict(), right.state_dict()
    assert list(left) == list(right)
    for key, value in left.items():
        assert value.dtype == right[key].dtype, key
        assert torch.equal(value, right[key]), key


@pytest.mark.parametrize("quant", QUANTS, ids=lambda q: q.describe() if q else "float")
@pytest.mark.parametrize("source", _sources(), ids=lambda s: f"{s[1]}-{s[0]}")
def test_streamed_model_equals_loading_whole_then_quantizing(source, quant, tmp_path_factory):
    path, model_dir = _checkpoint(*source, tmp_path_factory)
    require_builder(model_dir)
    streamed, _ = load_model(path, dtype=torch.float32, quant=quant)
    reference = _quantized_after_load(path, quant)
    _assert_same_state(streamed, reference)
    assert sum(is_quantized(m) for m in streamed.modules()) == (
        0 if quant is None else len([m for m in reference.modules() if is_quantized(m)])
    )
    assert torch.equal(case_logits(streamed, model_dir), case_logits(reference, model_dir))


def _is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


class _Allocations(TorchDispatchMode):
    """Every tensor storage that ops create on `device_type`, with how many bytes are alive at the peak.

    Storages are tracked through weak references, so a tensor freed (replaced, dropped) stops counting.
    """

    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type
        self.live: dict[int, int] = {}
        self.peak = self.total = self.total_float = self.largest = 0
        self._refs: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if _is_tensor(t)}
        for tensor in tree_flatten(out)[0]:
            # Views and in-place results reuse an input's storage: not an allocation.
            if _is_tensor(tensor) and tensor.device.type == self.device_type:
                if id(tensor.untyped_storage()) not in inputs:
                    self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._refs and self._refs[key]() is storage:
            return
        nbytes = storage.nbytes()
        self._refs[key] = weakref.ref(storage, lambda _, key=key: self.live.pop(key, None))
        self.live[key] = nbytes
        self.total += nbytes
        self.total_float += nbytes if tensor.is_floating_point() else 0
        self.largest = max(self.largest, nbytes)
        self.peak = max(self.peak, sum(self.live.values()))


def _state_bytes(model, floating_only: bool = False) -> int:
    storages = {}
    for tensor in model.state_dict().values():
        if not floating_only or tensor.is_floating_point():
            storages[id(tensor.untyped_storage())] = tensor.untyped_storage().nbytes()
    return sum(storages.values())


def _stream_onto_meta(path, quant, host: _Allocations | None = None) -> tuple[_Allocations, object, int]:
    """Stream `path` onto the meta device (a stand-in for an accelerator) while tracking what is allocated
    there (and, with `host`, on the CPU); also return the checkpoint's largest tensor in float32 bytes."""
    info, tensors = open_checkpoint(path)
    plan = plan_model_load(info.config, tensors, dtype=torch.float32, quant=quant)
    largest = max(torch.Size(step.shape).numel() * 4 for step in plan.keys)
    with host or contextlib.nullcontext(), _Allocations("meta") as target:
        stream_weights(plan.model, plan.keys, tensors, NO_PARALLEL, "meta")
    return target, plan.model, largest


@pytest.mark.parametrize("quant", QUANTS, ids=lambda q: q.describe() if q else "float")
def test_device_holds_the_final_model_plus_at_most_one_tensor(quant):
    target, model, largest = _stream_onto_meta(golden_dir() / "cogvlm" / "sat_checkpoint", quant)
    final = _state_bytes(model)
    assert target.peak <= final + largest
    # Each tensor is allocated there once, in its final form: no float weight of a quantized layer.
    assert target.total_float <= _state_bytes(model, floating_only=True)
    # The check can fail: the previous path (whole float model first, quantized there) breaks the bound.
    info, state = read_checkpoint(golden_dir() / "cogvlm" / "sat_checkpoint")
    with _Allocations("meta") as whole_first:
        old = build_model(info.config, device="meta")
        old.to_empty(device="meta")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying into meta tensors is a no-op, as intended here
            load_weights(old, state, "old")
        if quant is not None:
            quantize_(old, quant.bits, quant.group_size)
    if quant is not None:
        assert whole_first.peak > final + largest
        assert whole_first.total_float > _state_bytes(model, floating_only=True)


@pytest.mark.parametrize("quant", QUANTS, ids=lambda q: q.describe() if q else "float")
def test_host_holds_about_one_tensor_while_merging_split_shards(quant):
    split = golden_splits()[0][0]
    host = _Allocations("cpu")
    _, model, largest = _stream_onto_meta(split, quant, host)
    # Merging the ranks' pieces, casting and quantizing one tensor needs a few copies of it, never the
    # model (merging whole state dicts first would hold all of it).
    assert host.peak <= 4 * largest
    # The check can fail: merging the whole state dicts first (the previous path) holds the whole model.
    with _Allocations("cpu") as whole_first:
        read_checkpoint(split)
    assert whole_first.peak > 4 * largest


def test_a_quantized_checkpoint_loads_as_quantize_on_load(tmp_path):
    source = golden_dir() / "cogagent" / "sat_checkpoint"
    quant = QuantConfig(4, 16)
    output = tmp_path / "int4"
    convert_checkpoint(ConvertConfig(source, output, quant=quant, max_shard_bytes=200_000))
    saved, info = load_model(output, dtype=torch.float32)
    assert info.format == "hf" and info.quantization == quant
    _assert_same_state(saved, load_model(source, dtype=torch.float32, quant=quant)[0])
    _assert_same_state(saved, load_model(output, dtype=torch.float32, quant=quant)[0])
    with pytest.raises(CheckpointError, match=r"saved quantized \(int4, groups of 16\).*int8, per row"):
        load_model(output, quant=QuantConfig(8))
    with pytest.raises(CheckpointError, match="already quantized"):
        convert_checkpoint(ConvertConfig(output, tmp_path / "again", quant=quant))
    assert not (tmp_path / "again").exists()


def test_a_checkpoint_whose_scales_do_not_match_fails_naming_the_key(tmp_path):
    from safetensors.torch import load_file, save_file

    output = tmp_path / "int8"
    convert_checkpoint(
        ConvertConfig(golden_dir() / "cogvlm" / "sat_checkpoint", output, quant=QuantConfig(8))
    )
    weights = load_file(output / "model.safetensors")
    key = next(k for k in weights if k.endswith("mlp.down_proj.weight_scale"))
    weights[key] = weights[key][:-1].clone()
    save_file(weights, output / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"weight_scale has shape"):
        load_model(output)


@pytest.mark.parametrize(
    "source, quant",
    [("cogvlm_mp2", QuantConfig(8)), ("cogagent", QuantConfig(4))],
    ids=["mp2-split-int8-per-row", "cogagent-mp1-int4-per-row"],
)
def test_tensor_parallel_ranks_stream_their_quantized_shards(source, quant, tmp_path):
    # Per-row scales of row-parallel layers need the whole row's absmax: an all-reduce over real ranks.
    from tests.parallel import torchrun_jobs

    checkpoint = golden_dir() / source
    checkpoint = checkpoint if (checkpoint / "model_config.json").is_file() else checkpoint / "sat_checkpoint"
    quantized = tmp_path / "quantized"
    convert_checkpoint(ConvertConfig(checkpoint, quantized, quant=quant))
    args = (str(checkpoint), str(quantized), str(quant.bits), str(quant.group_size or 0), str(tmp_path))
    result = torchrun_jobs.run(2, "quant_load_worker.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["streamed"] == [] and report["saved"] == [], report
        assert report["quantized_layers"] > 0 and report["tp_size"] == 2


def test_cli_chat_answers_from_a_converted_quantized_checkpoint_as_with_quant(tmp_path, capsys):
    from cogvlm import cli

    source, quantized = golden_dir() / "cogvlm" / "sat_checkpoint", str(tmp_path / "int8")
    assert cli.main(["convert", "--from_pretrained", str(source), "--output", quantized, "--quant", "8"]) == 0
    assert "int8" in capsys.readouterr().out
    chat = [
        "chat", "--local_tokenizer", str(golden_dir() / "tokenizer.model"), "--version", "chat_old",
        "--image", str(golden_dir() / "test_image.png"), "--query", "Describe the image.",
        "--max_new_tokens", "8",
    ]  # fmt: skip
    assert cli.main([*chat, "--from_pretrained", str(source), "--quant", "8"]) == 0
    on_load = capsys.readouterr().out
    assert cli.main([*chat, "--from_pretrained", quantized]) == 0
    assert capsys.readouterr().out == on_load and on_load.strip()
    assert cli.main([*chat, "--from_pretrained", quantized, "--quant", "4"]) == 2
    error = capsys.readouterr().err
    assert "saved quantized (int8, per row)" in error and "int4, per row" in error


def test_loading_shows_a_progress_bar_on_a_terminal_only(monkeypatch, capsys):
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios

    checkpoint = golden_dir() / "cogvlm" / "sat_checkpoint"
    load_model(checkpoint, progress=True)
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest's capture
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        load_model(checkpoint, progress=True)
        terminal.flush()
    shown = os.read(leader, 1 << 16).decode(errors="replace")
    os.close(leader)
    assert "loading sat_checkpoint" in shown and "100%" in shown


@pytest.mark.parametrize("quant", QUANTS[1:], ids=lambda q: q.describe())
def test_vision_experts_derived_from_the_base_are_quantized_like_it(quant):
    # A checkpoint without visual-expert weights (a LLaMA-only start) derives them from the language
    # weights after the load: quantized, they copy the integers and scales quantizing the copy would give.
    from cogvlm.checkpoints.loading import load_model_from_state_dict

    info, state = read_checkpoint(golden_dir() / "cogvlm" / "sat_checkpoint")
    base_only = {key: value for key, value in state.items() if ".vision_" not in key}
    assert len(base_only) < len(state)
    derived = load_model_from_state_dict(info.config, base_only, "base", dtype=torch.float32)
    streamed = _stream_quantized(info.config, base_only, quant)
    _assert_same_state(streamed, quantize_(derived, quant.bits, quant.group_size))


def _stream_quantized(config, state, quant):
    from cogvlm.checkpoints.loading import stream_into_model
    from cogvlm.checkpoints.streaming import CheckpointTensors

    return stream_into_model(config, CheckpointTensors([state], "base"), dtype=torch.float32, quant=quant)


@pytest.mark.parametrize("quant", QUANTS[1:] + [QuantConfig(4)], ids=lambda q: q.describe())
def test_quantizing_in_chunks_of_rows_gives_the_whole_weights_result(quant, monkeypatch):
    from cogvlm.nn import quantized

    model = _quantized_after_load(golden_dir() / "cogvlm" / "sat_checkpoint", None)
    layer = model.transformer.layers[0].mlp.dense_h_to_4h  # [inner, hidden]
    weight = layer.weight.detach() * torch.linspace(0.5, 2, layer.weight.shape[0])[:, None]
    shell = quantize_(build_model(model.config, device="meta"), quant.bits, quant.group_size)
    shell = shell.transformer.layers[0].mlp.dense_h_to_4h
    whole = quantized.quantize_for(shell, weight)
    monkeypatch.setattr(quantized, "QUANTIZE_ROWS", 7)  # does not divide the rows
    chunked = quantized.quantize_for(shell, weight)
    integers, scale = quantized.quantize_weight(weight, quant.bits, quant.group_size)
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])
    assert torch.equal(whole[0], quantized.pack_int4(integers) if quant.bits == 4 else integers)
    assert torch.equal(whole[1], scale)


def test_weights_tied_across_modules_stay_tied():
    info, tensors = open_checkpoint(golden_dir() / "cogvlm" / "sat_checkpoint")
    plan = plan_model_load(info.config, tensors, dtype=torch.float32)
    model = plan.model
    model.mixins["lm"].lm_head.weight = model.transformer.word_embeddings.weight  # same shape, tied
    stream_weights(model, plan.keys, tensors, NO_PARALLEL, "cpu")
    assert model.mixins["lm"].lm_head.weight is model.transformer.word_embeddings.weight
    assert not model.transformer.word_embeddings.weight.is_meta
