"""Write a derived golden set: a copy of a golden directory with what can be changed consistently without
the reference implementation changed, to check that the golden tests read the set instead of assuming it.

What it can change: case names (and so their sorted order), which cases exist, how many tokens each greedy
continuation has (a prefix of a greedy continuation is the continuation of the shorter run), which
reference-made model-parallel splits exist. What it cannot: shapes, image sizes, vocabulary, layer counts,
prompts, since new logits need the reference implementation.

Derived text fields (`decoded_full`, `response_after_official_postprocess` of a shortened continuation)
are decoded by this package's tokenizer: the variant checks robustness, not correctness.

Usage: PYTHONPATH=. python tools/make_golden_variant.py OUT [--golden DIR] [--new-tokens N]
       [--drop CASE ...] [--rename] [--keep-mp N ...]
Then: COGVLM_GOLDEN=OUT python -m pytest -q tests/...
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from cogvlm.text_processors import LlamaTokenizer, extract_response

# Per-case tensors that run over the whole generated sequence, and their first axis of new tokens.
SEQUENCE_TENSORS = ("gen_output_ids", "gen_full_sequence_position_ids")
PER_NEW_TOKEN_FIELDS = ("new_token_ids", "greedy_no_cache_ids", "position_ids_of_generated_tokens")


@dataclass(frozen=True)
class VariantConfig:
    """How the derived set differs from its source."""

    source: Path
    target: Path
    new_tokens: int | None = None  # shorten every greedy continuation to this many tokens
    drop: tuple[str, ...] = ()  # source case names to remove
    rename: bool = False  # give every case a new name that sorts in another order
    keep_mp: tuple[int, ...] | None = None  # sizes of `<model>_mp<N>` folders to keep (None: all)

    def __post_init__(self) -> None:
        if self.new_tokens is not None and self.new_tokens < 1:
            raise ValueError(f"VariantConfig.new_tokens must be >= 1, got {self.new_tokens}")
        if self.target.exists():
            raise ValueError(f"VariantConfig.target {self.target} already exists")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _write_json(path: Path, value: Any) -> None:
    os.chmod(path, 0o644)
    path.write_text(json.dumps(value, indent=1))


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "text_inputs.json").is_file()


def _new_names(names: list[str]) -> dict[str, str]:
    """`case_<letter>` in the reverse of the old sorted order, so neither names nor order survive."""
    ordered = sorted(names, reverse=True)
    return {name: f"case_{chr(ord('a') + index)}" for index, name in enumerate(ordered)}


def _base_case(prompts: dict[str, dict], generation: dict) -> str:
    """The prompt case a generation continues: the longest prompt its output ids start with."""
    output = generation["output_ids"]
    starts = [name for name, p in prompts.items() if output[: len(p["input_ids"])] == p["input_ids"]]
    return max(starts, key=lambda name: len(prompts[name]["input_ids"]))


def _shorten(generation: dict, prompt_length: int, count: int, tokenizer, version: str) -> dict:
    """A greedy continuation cut to its first `count` tokens, with the fields that depend on it."""
    if len(generation["new_token_ids"]) <= count:
        return generation
    short = dict(generation)
    for field in PER_NEW_TOKEN_FIELDS:
        if field in short:
            short[field] = short[field][:count]
    short["output_ids"] = generation["output_ids"][: prompt_length + count]
    short["max_new_tokens"] = count
    short["stopped_on_eos"] = False  # the end token, if any, was the last of the longer run
    if "decoded_full" in short:
        short["decoded_full"] = tokenizer.decode(short["output_ids"])
        short["response_after_official_postprocess"] = extract_response(short["decoded_full"], version)
    return short


def _end_token_case(extra: dict, base: dict, prompt_length: int, eos: int) -> dict:
    """An extra-end-token case that still ends inside the shortened base continuation."""
    if len(extra["new_token_ids"]) <= len(base["new_token_ids"]):
        return extra
    ids = base["new_token_ids"]
    stop = max(k for k in range(len(ids)) if ids[k] not in ids[:k])  # a token that first appears there
    return {
        **extra,
        "end_tokens": [eos, ids[stop]],
        "new_token_ids": ids[: stop + 1],
        "output_ids": base["output_ids"][: prompt_length + stop + 1],
        "note": f"derived: same decode with end_tokens=[eos, {ids[stop]}]",
    }


def _shortened(name: str, generations: dict, prompts: dict, config: VariantConfig, tokenizer) -> dict:
    """A generation record with its continuation cut to `config.new_tokens` (an extra-end-token record is
    re-derived from its shortened base continuation when its end token no longer occurs there)."""
    generation, base = generations[name], _base_case(prompts, generations[name])
    length, version = len(prompts[base]["input_ids"]), prompts[base]["version"]
    if "max_new_tokens" in generation:
        return _shorten(generation, length, config.new_tokens, tokenizer, version)
    shortened_base = _shorten(generations[base], length, config.new_tokens, tokenizer, version)
    return _end_token_case(generation, shortened_base, length, tokenizer.eos_id)


def _rewrite_generations(model_dir: Path, config: VariantConfig, names: dict[str, str], tokenizer) -> None:
    prompts = _read_json(model_dir / "text_inputs.json")
    generations = _read_json(model_dir / "generation.json")
    result = {}
    for index, name in enumerate(generations):
        if _base_case(prompts, generations[name]) in config.drop or name in config.drop:
            continue
        generation = generations[name]
        if config.new_tokens is not None:
            generation = _shortened(name, generations, prompts, config, tokenizer)
        if not config.rename or name in prompts:
            new_name = names.get(name, name)
        else:
            new_name = f"ends_on_token_{index}"  # no longer starts with the name of the case it continues
        result[new_name] = generation
    _write_json(model_dir / "generation.json", result)
    kept = {names.get(n, n): p for n, p in prompts.items() if n not in config.drop}
    _write_json(model_dir / "text_inputs.json", kept)


def _rewrite_cases(model_dir: Path, config: VariantConfig, names: dict[str, str]) -> None:
    tensors = load_file(model_dir / "cases.safetensors")
    prompts = _read_json(model_dir / "text_inputs.json")  # already renamed and filtered
    result = {}
    for key, tensor in tensors.items():
        case, field = key.split(".", 1)
        if case in config.drop:
            continue
        case = names.get(case, case)
        if config.new_tokens is not None and case in prompts:
            length = len(prompts[case]["input_ids"])
            if field == "gen_step_logits":
                tensor = tensor[: config.new_tokens]
            elif field in SEQUENCE_TENSORS:
                tensor = tensor[:, : length + config.new_tokens]
        result[f"{case}.{field}"] = tensor.contiguous()
    os.chmod(model_dir / "cases.safetensors", 0o644)
    save_file(result, model_dir / "cases.safetensors")


def _rewrite_model_info(model_dir: Path, config: VariantConfig, names: dict[str, str]) -> None:
    info_path = model_dir / "model_info.json"
    if not info_path.is_file():
        return
    info = _read_json(info_path)
    for key in [k for k in info if k.startswith("sensitivity_")]:
        case = key.removeprefix("sensitivity_")
        info[f"sensitivity_{names.get(case, case)}"] = info.pop(key)
    if config.new_tokens is not None and "tiny_config" in info:
        info["tiny_config"]["max_new_tokens"] = config.new_tokens
    _write_json(info_path, info)


def _rewrite_low_precision(target: Path, config: VariantConfig, names: dict[str, dict[str, str]]) -> None:
    path = target / "low_precision_logits.safetensors"
    if not path.is_file():
        return
    result = {}
    for key, tensor in load_file(path).items():
        model, case, field = key.split(".", 2)
        if case in config.drop:
            continue
        result[f"{model}.{names.get(model, {}).get(case, case)}.{field}"] = tensor
    os.chmod(path, 0o644)
    save_file(result, path)


def _drop_splits(target: Path, keep: tuple[int, ...]) -> None:
    for path in sorted(target.iterdir()):
        match = re.fullmatch(r"(.+)_mp(\d+)", path.name)
        if match and int(match.group(2)) not in keep:
            shutil.rmtree(path)


def make_variant(config: VariantConfig) -> Path:
    """Copy `config.source` to `config.target` and apply the changes; returns the target."""
    shutil.copytree(config.source, config.target)
    for path in [config.target, *config.target.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)  # the shared set is read-only
    tokenizer = LlamaTokenizer.from_file(config.target / "tokenizer.model")
    all_names: dict[str, dict[str, str]] = {}
    for model_dir in sorted(p for p in config.target.iterdir() if _is_model_dir(p)):
        cases = [n for n in _read_json(model_dir / "text_inputs.json") if n not in config.drop]
        names = _new_names(cases) if config.rename else {}
        all_names[model_dir.name] = names
        _rewrite_generations(model_dir, config, names, tokenizer)
        _rewrite_cases(model_dir, config, names)
        _rewrite_model_info(model_dir, config, names)
    _rewrite_low_precision(config.target, config, all_names)
    if config.keep_mp is not None:
        _drop_splits(config.target, config.keep_mp)
    return config.target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path)
    default_golden = Path(os.environ.get("COGVLM_GOLDEN", "../shared/golden"))
    parser.add_argument("--golden", type=Path, default=default_golden)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--drop", nargs="*", default=[])
    parser.add_argument("--rename", action="store_true")
    parser.add_argument("--keep-mp", type=int, nargs="*")
    args = parser.parse_args(argv)
    config = VariantConfig(
        args.golden,
        args.target,
        args.new_tokens,
        tuple(args.drop),
        args.rename,
        None if args.keep_mp is None else tuple(args.keep_mp),
    )
    print(make_variant(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
