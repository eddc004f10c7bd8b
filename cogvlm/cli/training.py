"""Training companions: `cogvlm evaluate`, `merge-lora`, `export-lora` and `split-data`."""

from __future__ import annotations

import argparse

from cogvlm.cli.common import add_model_arguments, download_config, flag_dtype


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Score a checkpoint on a split; prints one JSON object."""
    import json

    from cogvlm.train.evaluation import EvaluateConfig, run_evaluation

    config = EvaluateConfig(
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
        limit=args.limit,
        dtype=flag_dtype(args),
        device=None if args.device == "auto" else args.device,
    )
    result, skipped, is_first_rank = run_evaluation(config)
    if is_first_rank:
        print(json.dumps({**result.to_json(), "skipped_too_long": len(skipped)}))
    return 0


def add_evaluate_parser(commands) -> None:
    """`cogvlm evaluate`."""
    parser = commands.add_parser("evaluate", help="exact-match accuracy and loss of a checkpoint on a split")
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="image folder or .jsonl file")
    parser.add_argument("--prompt", default="CAPTCHA:", help="question asked about a folder's images")
    parser.add_argument("--max_length", type=int, default=1288)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=4, help="samples per forward pass for the loss")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N samples")
    parser.set_defaults(handler=run_evaluate_command)


def run_merge_lora_command(args: argparse.Namespace) -> int:
    """Fold a LoRA checkpoint's adapter into its weights and save a plain SAT checkpoint."""
    from cogvlm.train.adapters import merge_lora_checkpoint

    destination = merge_lora_checkpoint(
        args.from_pretrained, args.save, flag_dtype(args), onto=args.merge_onto, base=args.base
    )
    print(destination)
    return 0


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
