"""`cogvlm finetune`: its flags, and their translation (over a DeepSpeed JSON) into a `FinetuneConfig`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cogvlm.cli.common import PROMPT_VERSIONS, QUANT_BITS, chosen_precision
from cogvlm.cli.reference_flags import (
    add_reference_finetune_flags,
    finetune_reference_settings,
    inert_notes,
    print_notes,
)
from cogvlm.errors import CogVLMError


def _lr_scales(values: Sequence[str]) -> tuple[tuple[str, float], ...]:
    scales = []
    for value in values:
        pattern, separator, scale = value.rpartition("=")
        if not separator or not pattern:
            raise CogVLMError(f"--lr_scale {value!r}: expected PATTERN=SCALE, e.g. 'mixins.eva.*=0.1'")
        try:
            scales.append((pattern, float(scale)))
        except ValueError:
            raise CogVLMError(f"--lr_scale {value!r}: {scale!r} is not a number") from None
    return tuple(scales)


def _explicit_training_flags(args: argparse.Namespace) -> dict:
    """Flags that may also come from the DeepSpeed JSON; only the ones given on the command line."""
    flags = {
        "micro_batch_size": args.micro_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "gradient_clipping": args.gradient_clipping,
        "zero_stage": args.zero_stage,
        "precision": chosen_precision(args, ("bf16", "fp16", "fp32")),
    }
    optimizer = {"lr": args.lr, "weight_decay": args.weight_decay, "eps": args.adam_eps}
    if args.adam_beta1 is not None or args.adam_beta2 is not None:
        optimizer["betas"] = (
            0.9 if args.adam_beta1 is None else args.adam_beta1,
            0.95 if args.adam_beta2 is None else args.adam_beta2,
        )
    flags["optimizer"] = {key: value for key, value in optimizer.items() if value is not None}
    return {key: value for key, value in flags.items() if value is not None}


def _lora_config(args: argparse.Namespace):
    from cogvlm.mixins.lora import DEFAULT_TARGETS, LoraConfig

    if args.full or args.no_lora:
        return None
    return LoraConfig(
        rank=args.lora_rank,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        targets=tuple(args.lora_targets or DEFAULT_TARGETS),
        layer_range=None if args.layer_range is None else tuple(args.layer_range),
        vision_layer_range=None if args.vision_layer_range is None else tuple(args.vision_layer_range),
        seed=args.seed,
    )


def _quantization(bits: int | None, group_size: int | None) -> dict | None:
    if bits is None:
        if group_size is not None:
            raise CogVLMError("--quant_group_size needs --quant 4 or --quant 8")
        return None
    return {"bits": bits, "group_size": group_size}


def finetune_config_from_args(args: argparse.Namespace):
    """The `FinetuneConfig` of `cogvlm finetune`: DeepSpeed JSON values, overridden by explicit flags."""
    from cogvlm.train.config import (
        build_finetune_config,
        merge_settings,
        read_deepspeed_json,
        settings_from_deepspeed_json,
    )

    reference = finetune_reference_settings(args)
    base = {}
    if args.deepspeed_config:
        base = settings_from_deepspeed_json(read_deepspeed_json(args.deepspeed_config), args.deepspeed_config)
    settings = merge_settings(base, _explicit_training_flags(args))
    settings.update(
        from_pretrained=args.from_pretrained,
        local_tokenizer=args.local_tokenizer,
        save_dir=reference["save_dir"],
        train_iters=args.train_iters,
        data=dict(
            train_path=args.train_data,
            valid_path=args.valid_data,
            test_path=reference["test_path"],
            prompt=args.prompt,
            version=args.version,
            max_length=args.max_length,
            num_workers=args.num_workers,
            allow_outside_data=args.allow_outside_data,
        ),
        lora=_lora_config(args),
        quantization=_quantization(reference["quant"], args.quant_group_size),
        trainable=dict(
            full=args.full,
            train_patterns=tuple(args.train_params),
            freeze_patterns=tuple(args.freeze_params),
            lr_scales=_lr_scales(args.lr_scale),
        ),
        schedule=dict(
            warmup_ratio=args.warmup, decay_style=args.lr_decay_style, min_lr_ratio=args.min_lr_ratio
        ),
        checkpoint_activations=args.checkpoint_activations,
        vision_checkpoint_activations=args.vision_checkpoint_activations,
        shuffle_image_tokens=args.shuffle_image_tokens is not None,
        shuffle_scope=args.shuffle_image_tokens or "all",
        tp_size=args.tp_size,
        seed=args.seed,
        save_interval=args.save_interval,
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
        eval_batch_size=reference["eval_batch_size"],
        strict_eval=reference["strict_eval"],
        max_new_tokens=args.max_new_tokens,
        log_interval=args.log_interval,
        resume=not args.no_resume,
        progress_bar=not args.no_progress_bar,
        device=args.device,
        distributed_backend=reference["distributed_backend"],
    )
    return build_finetune_config(settings)


def run_finetune_command(args: argparse.Namespace) -> int:
    """Fine-tune; rank 0 prints the final evaluation (the trainable-parameter report is logged at start)."""
    import json
    import logging

    from cogvlm.train.distributed import is_rank_zero
    from cogvlm.train.loop import run_finetune

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = finetune_config_from_args(args)
    print_notes(inert_notes(args, "finetune"))
    result = run_finetune(config)
    if is_rank_zero():
        evaluations = {"final_evaluation": result.final_evaluation, "test_evaluation": result.test_evaluation}
        for name, evaluation in evaluations.items():
            if evaluation is not None:
                print(json.dumps({name: evaluation.to_json()}))
        if result.plot is not None:
            print(f"loss/accuracy plot: {result.plot}", file=sys.stderr)
    return 0


def _add_precision_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("precision (default: the DeepSpeed JSON's, else bf16)")
    group.add_argument("--bf16", action="store_true", help="bfloat16")
    group.add_argument("--fp16", action="store_true", help="float16 with loss scaling (GPU only)")
    group.add_argument("--fp32", action="store_true", help="float32")


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--train_data", "--train-data", required=True, help="image folder or .jsonl file")
    group.add_argument("--valid_data", "--valid-data", default=None, help="image folder or .jsonl file")
    group.add_argument("--prompt", default="CAPTCHA:", help="question asked about a folder's images")
    group.add_argument("--version", default=None, choices=PROMPT_VERSIONS)
    group.add_argument("--max_length", type=int, default=1288, help="longest sample; longer ones are skipped")
    group.add_argument("--num_workers", type=int, default=0, help="data loader worker processes")
    group.add_argument(
        "--allow_outside_data",
        action="store_true",
        help="accept images outside the data folder (JSONL paths, symbolic links); refused by default",
    )


def _add_optimisation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "optimisation (unset values come from --deepspeed_config, else defaults)"
    )
    group.add_argument("--train_iters", "--train-iters", type=int, required=True, help="optimizer steps")
    group.add_argument(
        "--micro_batch_size", type=int, default=None, help="samples per rank per micro-step [4]"
    )
    group.add_argument("--gradient_accumulation_steps", type=int, default=None, help="[1]")
    group.add_argument("--lr", type=float, default=None, help="peak learning rate [1e-5]")
    group.add_argument("--weight_decay", "--weight-decay", type=float, default=None, help="[0.05]")
    group.add_argument("--adam_beta1", type=float, default=None, help="[0.9]")
    group.add_argument("--adam_beta2", type=float, default=None, help="[0.95]")
    group.add_argument("--adam_eps", type=float, default=None, help="[1e-8]")
    group.add_argument(
        "--gradient_clipping", type=float, default=None, help="max gradient norm, 0 = off [0.1]"
    )
    group.add_argument("--warmup", type=float, default=0.02, help="fraction of the run spent warming up")
    group.add_argument(
        "--lr_decay_style", "--lr-decay-style", default="cosine", choices=["cosine", "linear", "constant"]
    )
    group.add_argument("--min_lr_ratio", type=float, default=0.1, help="decay ends at this fraction of lr")
    group.add_argument(
        "--zero_stage", type=int, default=None, choices=[0, 1, 2], help="DeepSpeed ZeRO stage [2]"
    )
    group.add_argument(
        "--deepspeed_config", default=None, help="DeepSpeed JSON; flags given here override it"
    )
    group.add_argument("--seed", type=int, default=2023)
    _add_precision_flags(parser)


def _add_adapter_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what trains (default: a LoRA adapter only)")
    group.add_argument("--use_lora", action="store_true", help="train a LoRA adapter (the default)")
    group.add_argument("--no_lora", action="store_true", help="no adapter; train only --train_params")
    group.add_argument("--full", action="store_true", help="full fine-tuning: every parameter, no adapter")
    group.add_argument("--lora_rank", type=int, default=10)
    group.add_argument("--lora_alpha", type=float, default=1.0, help="scaling is alpha / rank")
    group.add_argument("--lora_dropout", type=float, default=0.0)
    group.add_argument(
        "--lora_targets",
        nargs="+",
        default=None,
        help="language_attention vision_expert_attention cross_attention language_mlp vision_expert_mlp "
        "vision_attention [language_attention vision_attention]",
    )
    group.add_argument("--layer_range", type=int, nargs="+", default=None, help="LLM layers to adapt [all]")
    group.add_argument("--vision_layer_range", type=int, nargs="+", default=None, help="EVA layers [all]")
    group.add_argument(
        "--train_params", nargs="+", default=[], help="also train parameters matching these globs"
    )
    group.add_argument("--freeze_params", nargs="+", default=[], help="never train parameters matching these")
    group.add_argument(
        "--lr_scale", action="append", default=[], help="PATTERN=SCALE learning-rate multiplier"
    )
    group.add_argument(
        "--quant",
        type=int,
        choices=QUANT_BITS,
        default=None,
        help="QLoRA: quantize the frozen base to int4/int8 before adding the adapter (LoRA-only training)",
    )
    group.add_argument(
        "--quant_group_size", type=int, default=None, help="inputs per quantization scale (default: per row)"
    )


def add_finetune_parser(commands) -> None:
    """`cogvlm finetune`."""
    parser = commands.add_parser("finetune", help="fine-tune on DeepSpeed (LoRA or full)")
    parser.add_argument("--from_pretrained", required=True, help="base checkpoint directory (SAT or HF)")
    parser.add_argument(
        "--local_tokenizer",
        "--tokenizer",
        dest="local_tokenizer",
        default=None,
        help="tokenizer.model, its folder, or an HF repo id (fetched into the HF cache if missing)",
    )
    parser.add_argument("--save", required=True, help="run directory: checkpoints, logs; resumed if present")
    _add_data_flags(parser)
    _add_optimisation_flags(parser)
    _add_adapter_flags(parser)
    group = parser.add_argument_group("run")
    group.add_argument(
        "--tp_size",
        "--model-parallel-size",
        "--model_parallel_size",
        dest="tp_size",
        type=int,
        default=1,
        help="tensor-parallel size (world = tp x data parallel)",
    )
    group.add_argument(
        "--nproc", type=int, default=1, help="processes on this machine: re-run this command under torchrun"
    )
    group.add_argument("--checkpoint_activations", "--checkpoint-activations", action="store_true")
    group.add_argument("--vision_checkpoint_activations", "--vit_checkpoint_activations", action="store_true")
    group.add_argument(
        "--shuffle_image_tokens",
        nargs="?",
        const="all",
        choices=("all", "within_rows"),  # FinetuneConfig's SHUFFLE_SCOPES (not imported: --help stays light)
        help="permute each training image's patch tokens at random (the model must then read where a patch "
        "is from the vision tower, not count its place in the token order); within_rows permutes only "
        "inside each row of the patch grid, so the column must be read and the row may still be counted",
    )
    group.add_argument(
        "--save_interval", "--save-interval", type=int, default=200, help="steps between checkpoints"
    )
    group.add_argument(
        "--eval_interval", "--eval-interval", type=int, default=0, help="steps between evaluations"
    )
    group.add_argument("--eval_iters", "--eval-iters", type=int, default=10, help="validation batches scored")
    group.add_argument("--max_new_tokens", type=int, default=32, help="answer length limit when evaluating")
    group.add_argument("--log_interval", type=int, default=1)
    group.add_argument("--no_resume", action="store_true", help="start over even if --save has a checkpoint")
    group.add_argument("--no_progress_bar", action="store_true")
    group.add_argument("--device", default=None, help="cpu or cuda[:n] (default: this rank's GPU, else cpu)")
    add_reference_finetune_flags(parser)
    parser.set_defaults(handler=run_finetune_command)
