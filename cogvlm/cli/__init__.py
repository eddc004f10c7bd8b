"""The `cogvlm` command: parses arguments into each feature's config and calls that feature.

Each module of this package holds a theme's subcommands, an `add_<command>_parser` and a `run_<command>`
each; `SUBCOMMANDS` lists them in the order `cogvlm --help` shows them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cogvlm.cli.caption import add_caption_parser
from cogvlm.cli.chat import add_bench_parser, add_chat_parser, run_bench, run_chat
from cogvlm.cli.checkpoints import (
    add_convert_parser,
    add_download_parser,
    add_list_parser,
    add_merge_parser,
    add_split_parser,
    run_convert,
    run_download,
    run_list,
    run_merge,
    run_split,
)
from cogvlm.cli.common import add_download_arguments, add_model_arguments, download_config
from cogvlm.cli.finetune import add_finetune_parser, finetune_config_from_args, run_finetune_command
from cogvlm.cli.serving import add_serve_parser, add_web_parser, run_serve, run_web
from cogvlm.cli.synthetic import (
    add_dialogue_data_parser,
    add_eval_synthetic_parser,
    add_init_model_parser,
    add_mix_data_parser,
    add_synth_data_parser,
    run_eval_synthetic,
    run_init_model,
    run_synth_data,
)
from cogvlm.cli.training import (
    add_evaluate_parser,
    add_export_lora_parser,
    add_merge_lora_parser,
    add_split_data_parser,
    run_evaluate_command,
    run_export_lora_command,
    run_merge_lora_command,
    run_split_data_command,
)
from cogvlm.errors import CogVLMError

# One entry per subcommand; each adds its parser and sets `handler`.
SUBCOMMANDS = (
    add_chat_parser,
    add_caption_parser,
    add_download_parser,
    add_list_parser,
    add_convert_parser,
    add_split_parser,
    add_merge_parser,
    add_serve_parser,
    add_web_parser,
    add_bench_parser,
    add_finetune_parser,
    add_evaluate_parser,
    add_merge_lora_parser,
    add_export_lora_parser,
    add_split_data_parser,
    add_synth_data_parser,
    add_mix_data_parser,
    add_dialogue_data_parser,
    add_init_model_parser,
    add_eval_synthetic_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="cogvlm", description="CogVLM and CogAgent visual-language models")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    # The deepspeed launcher passes --local_rank before the subcommand (LOCAL_RANK is in the environment too).
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(nproc=1)
    commands = parser.add_subparsers(dest="command", required=True)
    for add_parser in SUBCOMMANDS:
        add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cogvlm` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.nproc > 1:
        from cogvlm.launch.torchrun import is_torchrun_worker, relaunch_under_torchrun

        if not is_torchrun_worker():
            relaunch_under_torchrun(args.nproc, argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (CogVLMError, ValueError, FileNotFoundError) as error:
        if args.debug:
            raise
        print(f"cogvlm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: stop without a traceback, with the shell's exit status for SIGINT
        if args.debug:
            raise
        print(file=sys.stderr)
        return 130


__all__ = [
    "SUBCOMMANDS",
    "add_bench_parser",
    "add_chat_parser",
    "add_convert_parser",
    "add_download_arguments",
    "add_download_parser",
    "add_eval_synthetic_parser",
    "add_evaluate_parser",
    "add_export_lora_parser",
    "add_finetune_parser",
    "add_init_model_parser",
    "add_list_parser",
    "add_merge_lora_parser",
    "add_merge_parser",
    "add_model_arguments",
    "add_serve_parser",
    "add_split_data_parser",
    "add_split_parser",
    "add_synth_data_parser",
    "add_web_parser",
    "build_parser",
    "download_config",
    "finetune_config_from_args",
    "main",
    "run_bench",
    "run_chat",
    "run_convert",
    "run_download",
    "run_eval_synthetic",
    "run_evaluate_command",
    "run_export_lora_command",
    "run_finetune_command",
    "run_init_model",
    "run_list",
    "run_merge",
    "run_merge_lora_command",
    "run_serve",
    "run_split",
    "run_split_data_command",
    "run_synth_data",
    "run_web",
]
