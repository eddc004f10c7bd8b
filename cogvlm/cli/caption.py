"""`cogvlm caption` (alias `infer`): batch inference over a folder, a JSONL or a glob, JSONL out."""

from __future__ import annotations

import argparse
from pathlib import Path

from cogvlm.cli.common import QUANT_BITS, add_model_arguments, flag_dtype, model_source, sampling_settings
from cogvlm.embedded import EMBEDDED_NAME


def run_caption(args: argparse.Namespace) -> int:
    """Caption every input not yet in --output."""
    from cogvlm.frontends import caption

    generation = sampling_settings(args)
    config = caption.CaptionConfig(
        source=args.input,
        output=Path(args.output),
        model=model_source(args, flag_dtype(args), args.quant, args.quant_group_size),
        query=args.query,
        batch_size=args.batch_size,
        tp_size=args.tp_size,
        generation=generation,
        compiled=args.compile,
    )
    caption.run_caption(config)
    return 0


def add_caption_parser(commands) -> None:
    """`cogvlm caption` / `cogvlm infer`: `cogvlm chat`'s model, prompt and sampling flags, plus batching."""
    parser = commands.add_parser(
        "caption",
        aliases=["infer"],
        help="answer a query about many images (folder, JSONL or glob) into a resumable JSONL",
        description='Answer a query about every image of a folder, a JSONL of {"image", "query"[, "id"]} '
        "records or a glob. Records are appended to --output as they come; a rerun skips inputs already "
        "there. Under --nproc N (or torchrun, any number of nodes) each data-parallel rank takes a slice.",
    )
    parser.add_argument("input", help="a folder of images, a .jsonl file, or a quoted glob ('imgs/**/*.jpg')")
    parser.add_argument("--output", required=True, help="the JSONL to append to (resumed if it exists)")
    add_model_arguments(parser, default_checkpoint=EMBEDDED_NAME)
    parser.add_argument(
        "--query",
        default=None,
        help="for inputs without their own (default: 'Describe this image.'; the embedded model's own "
        "'Describe the image.')",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="rows of the continuous decode batch")
    parser.add_argument(
        "--tp_size",
        type=int,
        default=1,
        help="tensor-parallel ranks per model copy (world size = tp_size x data-parallel ranks)",
    )
    # As `cogvlm chat`: None leaves a field to the checkpoint's generation defaults.
    parser.add_argument("--max_length", type=int, default=None, help="prompt, image slots and answer")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="cap on generated tokens")
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--top_k", type=int, default=None, help="default 1: greedy (the reference's)")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--repetition_penalty", type=float, default=None)
    parser.add_argument("--sampler", choices=["reference", "standard"], default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (every input its own draw)")
    parser.add_argument("--quant", type=int, choices=QUANT_BITS, default=None, help="weight-only int4/int8")
    parser.add_argument("--quant_group_size", type=int, default=None, help="int4/int8 group size")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoding steps")
    parser.set_defaults(handler=run_caption)
