"""The reference's command lines, accepted as they are: SAT's flags in its finetune, evaluate and merge
scripts (`finetune_demo/*.sh`, `finetune_*_demo.py`, `utils/merge_model.py`).

A flag either keeps its meaning (translated by the subcommand), or has none here: then it is accepted
and a one-line note on stderr says why it changes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from cogvlm.errors import ConfigError

# SAT's --mode: fine-tuning is the only one the reference's scripts use.
MODES = ["finetune"]
BACKENDS = ["nccl", "gloo", "mpi"]


@dataclass(frozen=True)
class InertFlag:
    """A reference flag that has no effect here, and why (`value`: it takes an argument)."""

    names: tuple[str, ...]
    why: str
    value: bool = False

    @property
    def dest(self) -> str:
        """Its own namespace attribute (never one of the subcommand's real ones)."""
        return "reference_" + self.names[0].lstrip("-").replace("-", "_")


# The fine-tuning models' own flags (FineTuneTrain/TestCogVLMModel.add_model_specific_args).
MODEL_FLAGS_NO_EFFECT = "the checkpoint's model_config.json records its adapter; this command reads it there"
FINETUNE_MODEL_FLAGS = (
    InertFlag(("--use_lora",), MODEL_FLAGS_NO_EFFECT),
    InertFlag(("--lora_rank",), MODEL_FLAGS_NO_EFFECT, value=True),
    InertFlag(("--use_qlora",), MODEL_FLAGS_NO_EFFECT),
    InertFlag(("--use_ptuning",), MODEL_FLAGS_NO_EFFECT),
    InertFlag(("--pre_seq_len",), MODEL_FLAGS_NO_EFFECT, value=True),
    InertFlag(("--layer_range",), MODEL_FLAGS_NO_EFFECT, value=True),
)
NOTHING_TRAINS = "evaluation trains nothing"
EVALUATE_INERT = (
    *FINETUNE_MODEL_FLAGS,
    InertFlag(("--experiment-name", "--experiment_name"), "no run folder is made to evaluate", value=True),
    InertFlag(("--save",), "evaluation saves no checkpoint (--predictions names the output)", value=True),
    InertFlag(("--train-data", "--train_data"), "only the --test-data / --data split is scored", value=True),
    InertFlag(("--valid-data", "--valid_data"), "only the --test-data / --data split is scored", value=True),
    InertFlag(("--split",), "only the --test-data / --data split is scored", value=True),
    InertFlag(("--resume-dataloader", "--resume_dataloader"), NOTHING_TRAINS),
    InertFlag(("--lr-decay-style", "--lr_decay_style"), NOTHING_TRAINS, value=True),
    InertFlag(("--warmup",), NOTHING_TRAINS, value=True),
    InertFlag(("--save-interval", "--save_interval"), NOTHING_TRAINS, value=True),
    InertFlag(("--eval-interval", "--eval_interval"), NOTHING_TRAINS, value=True),
    InertFlag(("--checkpoint-activations", "--checkpoint_activations"), NOTHING_TRAINS),
    InertFlag(("--vit_checkpoint_activations", "--vision_checkpoint_activations"), NOTHING_TRAINS),
    InertFlag(("--ignore_pad_token_for_loss",), "padding is never a target or part of a decoded label"),
    InertFlag(
        ("--distributed-backend", "--distributed_backend"),
        "tensor-parallel ranks talk over nccl on CUDA and gloo on CPU",
        value=True,
    ),
)
MERGE_INERT = (
    InertFlag(
        ("--use_lora",),
        "merge re-shards the weights as they are; `cogvlm merge-lora` folds an adapter in",
    ),
    *(flag for flag in FINETUNE_MODEL_FLAGS if flag.names != ("--use_lora",)),
    InertFlag(
        ("--version",),
        "the prompt format is chosen where the checkpoint is used (its text_processor_version, or --version)",
        value=True,
    ),
)
FINETUNE_INERT = (
    InertFlag(("--ignore_pad_token_for_loss",), "padding is never a target"),
    InertFlag(("--pre_seq_len",), "P-tuning (--use_ptuning) is not implemented", value=True),
)


def add_inert_flags(parser: argparse.ArgumentParser, flags: Sequence[InertFlag]) -> None:
    """Accept `flags`; `inert_notes` names the ones given."""
    group = parser.add_argument_group("the reference's flags that change nothing here (a note says why)")
    for flag in flags:
        kwargs = {"metavar": "X"} if flag.value else {"action": "store_true"}
        group.add_argument(*flag.names, dest=flag.dest, default=None, help=flag.why, **kwargs)
    parser.set_defaults(inert_flags=tuple(flags))


def inert_notes(args: argparse.Namespace, command: str) -> list[str]:
    """One line per inert flag that was given."""
    return [
        f"cogvlm {command}: note: {flag.names[0]} has no effect here: {flag.why}"
        for flag in args.inert_flags
        if getattr(args, flag.dest) not in (None, False)
    ]


def print_notes(notes: Sequence[str]) -> None:
    """Print `notes` on stderr, once (on global rank 0 under a launcher)."""
    if os.environ.get("RANK", "0") == "0":
        for note in notes:
            print(note, file=sys.stderr)


def check_split(value: str | None) -> None:
    """SAT's --split: the fraction of --train-data that trains. Only "1" (all of it; validation and test
    come from their own folders, as in the reference's scripts) is supported."""
    if value is None:
        return
    try:
        weights = [float(part) for part in value.replace("/", ",").split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--split {value!r}: expected weights like 1. or 949,50,1") from None
    if not weights or weights[0] <= 0 or any(weight != 0 for weight in weights[1:]):
        raise ConfigError(
            f"--split {value}: carving validation or test samples out of --train-data is not supported; "
            "make the splits with `cogvlm split-data` and pass --valid_data / --test-data (--split 1.)"
        )


def add_reference_finetune_flags(parser: argparse.ArgumentParser) -> None:
    """SAT's training flags of the reference's fine-tuning scripts that `cogvlm finetune` lacks."""
    group = parser.add_argument_group("the reference's (SAT's) flags")
    group.add_argument(
        "--experiment-name",
        "--experiment_name",
        dest="experiment_name",
        default=None,
        help="the run goes into --save/NAME (SAT adds a timestamp; here the name is kept, so that "
        "starting the command again resumes the run)",
    )
    group.add_argument("--mode", choices=MODES, default="finetune", help="SAT's mode: finetune only")
    group.add_argument(
        "--resume-dataloader",
        "--resume_dataloader",
        action="store_true",
        help="always on: a resumed run continues the saved data order",
    )
    group.add_argument(
        "--skip-init", "--skip_init", action="store_true", help="always on: weights come from the checkpoint"
    )
    group.add_argument(
        "--distributed-backend",
        "--distributed_backend",
        choices=BACKENDS,
        default=None,
        help="torch.distributed backend (default nccl on CUDA, gloo on CPU; nccl on CPU falls back to gloo)",
    )
    group.add_argument(
        "--eval-batch-size",
        "--eval_batch_size",
        type=int,
        default=None,
        help="samples per validation batch (default --micro_batch_size)",
    )
    group.add_argument(
        "--strict-eval",
        "--strict_eval",
        action="store_true",
        help="validate on the whole set instead of --eval-iters batches",
    )
    group.add_argument(
        "--test-data", "--test_data", default=None, help="image folder or .jsonl scored once after training"
    )
    group.add_argument("--split", default=None, help="SAT's train/valid/test weights: only 1 (all train)")
    group.add_argument("--use_qlora", action="store_true", help="the reference's QLoRA: --quant 4")
    group.add_argument("--use_ptuning", action="store_true", help="P-tuning v2: not implemented (refused)")
    add_inert_flags(parser, FINETUNE_INERT)


def finetune_reference_settings(args: argparse.Namespace) -> dict:
    """What the reference flags of `cogvlm finetune` change, checked."""
    if args.use_ptuning:
        raise ConfigError("--use_ptuning: P-tuning v2 is not implemented; train a LoRA adapter (the default)")
    check_split(args.split)
    quant = args.quant
    if args.use_qlora:
        if quant not in (None, 4):
            raise ConfigError(f"--use_qlora is the reference's 4-bit QLoRA; it contradicts --quant {quant}")
        quant = 4
    save = args.save if args.experiment_name is None else os.path.join(args.save, args.experiment_name)
    return {
        "save_dir": save,
        "quant": quant,
        "eval_batch_size": args.eval_batch_size,
        "strict_eval": args.strict_eval,
        "distributed_backend": args.distributed_backend,
        "test_path": args.test_data,
    }
