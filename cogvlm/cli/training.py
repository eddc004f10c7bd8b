"""Training companions: `cogvlm evaluate`, `merge-lora`, `export-lora` and `split-data`."""

from __future__ import annotations

import argparse

from cogvlm.cli.common import add_model_arguments, download_config, flag_dtype, torch_dtype
from cogvlm.cli.reference_flags import EVALUATE_INERT, MODES, add_inert_flags, inert_notes, print_notes
from cogvlm.errors import CogVLMError, ConfigError


def _evaluation_dtype(args: argparse.Namespace):
    """--bf16 / --fp16, else the precision of --deepspeed_config (the reference evaluates in it)."""
    dtype = flag_dtype(args)
    if dtype is not None or not args.deepspeed_config:
        return dtype
    from cogvlm.train.config import read_deepspeed_json, settings_from_deepspeed_json

    raw = read_deepspeed_json(args.deepspeed_config)
    precision = settings_from_deepspeed_json(raw, args.deepspeed_config).get("precision")
    return None if precision in (None, "fp32") else torch_dtype(precision)


def _evaluation_limit(args: argparse.Namespace) -> int | None:
    """--limit; else SAT's --eval-iters batches of --eval-batch-size unless --strict-eval (whole set)."""
    if args.train_iters:
        raise ConfigError(f"--train-iters {args.train_iters}: evaluate trains nothing; use cogvlm finetune")
    if args.limit is not None or args.strict_eval or args.eval_iters is None:
        return args.limit
    return args.eval_iters * args.batch_size


def evaluate_config_from_args(args: argparse.Namespace):
    """The `EvaluateConfig` of `cogvlm evaluate` (the reference's flags translated)."""
    from cogvlm.train.evaluation import EvaluateConfig

    return EvaluateConfig(
        from_pretrained=args.from_pretrained,
        download=download_config(args),
        data_path=args.data,
        local_tokenizer=args.local_tokenizer,
        version=args.version,
        prompt_style=args.prompt_style,
        prompt=args.prompt,
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        limit=_evaluation_limit(args),
        dtype=_evaluation_dtype(args),
        device=None if args.device == "auto" else args.device,
        iteration=args.iteration,
        tp_size=args.model_parallel_size,
        predictions_path=args.predictions or None,
        show_predictions=args.show_predictions,
        allow_outside_data=args.allow_outside_data,
    )


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Score a checkpoint on a split; writes the predictions and prints one JSON object."""
    import json

    import torch

    from cogvlm.train.evaluation import run_evaluation

    config = evaluate_config_from_args(args)
    print_notes(inert_notes(args, "evaluate"))
    if args.seed is not None:
        torch.manual_seed(args.seed)
    result, skipped, is_first_rank = run_evaluation(config)
    if is_first_rank:
        report = {**result.to_json(), "skipped_too_long": len(skipped)}
        print(json.dumps({**report, "predictions": config.predictions_path}))
    return 0


class _ModelParallelSize(argparse.Action):
    """SAT's --model-parallel-size: the tensor-parallel size, and the process count when not launched."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.model_parallel_size = values
        namespace.nproc = values


def _add_reference_evaluate_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the reference's evaluate_*.sh that keep their meaning here."""
    group = parser.add_argument_group("the reference's (SAT's) flags")
    group.add_argument(
        "--model-parallel-size",
        "--model_parallel_size",
        action=_ModelParallelSize,
        type=int,
        default=None,
        help="tensor-parallel ranks per model; under a launcher with more processes, the other factor "
        "shares out the samples (data parallel); alone, as --nproc",
    )
    group.add_argument("--mode", choices=MODES, default="finetune", help="SAT's mode: finetune only")
    group.add_argument("--train-iters", "--train_iters", type=int, default=0, help="0: evaluate only")
    group.add_argument(
        "--strict-eval", "--strict_eval", action="store_true", help="score the whole split (the default)"
    )
    group.add_argument(
        "--eval-iters",
        "--eval_iters",
        type=int,
        default=None,
        help="without --strict-eval: score only this many batches of --eval-batch-size",
    )
    group.add_argument("--deepspeed_config", default=None, help="DeepSpeed JSON: its precision, if no --bf16")
    group.add_argument("--seed", type=int, default=None, help="random seed (answers are greedy)")
    group.add_argument("--skip-init", "--skip_init", action="store_true", help="always on")
    add_inert_flags(parser, EVALUATE_INERT)


def add_evaluate_parser(commands) -> None:
    """`cogvlm evaluate`."""
    parser = commands.add_parser("evaluate", help="exact-match accuracy and loss of a checkpoint on a split")
    add_model_arguments(parser)
    parser.add_argument(
        "--data", "--test-data", "--test_data", required=True, help="image folder or .jsonl file"
    )
    parser.add_argument("--prompt", default="CAPTCHA:", help="question asked about a folder's images")
    parser.add_argument("--max_length", type=int, default=1288)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument(
        "--batch_size",
        "--eval-batch-size",
        "--eval_batch_size",
        type=int,
        default=4,
        help="samples per forward pass for the loss",
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N samples")
    parser.add_argument(
        "--iteration", type=int, default=None, help="a run's saved iteration (default latest)"
    )
    parser.add_argument(
        "--predictions",
        default="predictions.jsonl",
        help="JSONL of every sample: id, image, query, prediction, reference, correct ('' for none)",
    )
    parser.add_argument(
        "--show_predictions", action="store_true", help="print each sample's answer as it is scored"
    )
    parser.add_argument(
        "--allow_outside_data", action="store_true", help="accept images outside the data folder"
    )
    _add_reference_evaluate_flags(parser)
    parser.set_defaults(handler=run_evaluate_command)


def run_merge_lora_command(args: argparse.Namespace) -> int:
    """Fold a LoRA checkpoint's adapter into its weights and save a plain SAT checkpoint."""
    from cogvlm.train.adapters import merge_lora_checkpoint

    destination = merge_lora_checkpoint(
        args.from_pretrained,
        args.save,
        flag_dtype(args),
        onto=args.merge_onto,
        base=args.base,
        iteration=_iteration(args.iteration),
    )
    print(destination)
    return 0


def _iteration(value: str) -> int | None:
    if value == "latest":
        return None
    if not value.isdigit():
        raise CogVLMError(f"--iteration {value!r}: expected a saved iteration number or 'latest'")
    return int(value)


def add_merge_lora_parser(commands) -> None:
    """`cogvlm merge-lora`."""
    parser = commands.add_parser("merge-lora", help="fold a LoRA adapter into the base weights (SAT output)")
    parser.add_argument("--from_pretrained", required=True, help="LoRA checkpoint (a finetune --save dir)")
    parser.add_argument("--save", required=True, help="output SAT checkpoint directory")
    parser.add_argument("--bf16", action="store_true", help="save in bfloat16")
    parser.add_argument("--fp16", action="store_true", help="save in float16")
    parser.add_argument(
        "--merge_onto",
        choices=["dequantized", "original"],
        default="dequantized",
        help="QLoRA runs: fold the adapter into the dequantized base it was trained on (default; the "
        "result computes what the QLoRA model computes) or into the original floating-point base",
    )
    parser.add_argument("--base", default=None, help="QLoRA runs: the base checkpoint, if it has moved")
    parser.add_argument(
        "--iteration", default="latest", help="which saved iteration to merge, e.g. 500 (default: latest)"
    )
    parser.set_defaults(handler=run_merge_lora_command)


def run_export_lora_command(args: argparse.Namespace) -> int:
    """Write the adapter alone in PEFT's format."""
    from cogvlm.train.adapters import export_lora_checkpoint

    print(export_lora_checkpoint(args.from_pretrained, args.save, args.base_model_name_or_path))
    return 0


def add_export_lora_parser(commands) -> None:
    """`cogvlm export-lora`."""
    parser = commands.add_parser("export-lora", help="export a LoRA adapter for Hugging Face PEFT")
    parser.add_argument("--from_pretrained", required=True, help="LoRA checkpoint (a finetune --save dir)")
    parser.add_argument("--save", required=True, help="output adapter directory")
    parser.add_argument("--base_model_name_or_path", default="", help="recorded in adapter_config.json")
    parser.set_defaults(handler=run_export_lora_command)


def run_split_data_command(args: argparse.Namespace) -> int:
    """Split a data set into train/valid/test."""
    import json

    from cogvlm.train.split import SplitConfig, split_dataset

    counts = split_dataset(SplitConfig(args.source, args.dest, tuple(args.fractions), args.seed))
    print(json.dumps(counts))
    return 0


def add_split_data_parser(commands) -> None:
    """`cogvlm split-data`."""
    parser = commands.add_parser("split-data", help="seeded train/valid/test split (copies files)")
    parser.add_argument("--source", required=True, help="image folder or .jsonl file")
    parser.add_argument("--dest", required=True, help="output folder (train/ valid/ test/ or *.jsonl)")
    parser.add_argument(
        "--fractions", type=float, nargs=3, default=[0.8, 0.05, 0.15], metavar=("TRAIN", "VALID", "TEST")
    )
    parser.add_argument("--seed", type=int, default=2023)
    parser.set_defaults(handler=run_split_data_command)
