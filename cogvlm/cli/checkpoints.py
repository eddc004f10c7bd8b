"""Checkpoint subcommands: `cogvlm download`, `list`, `convert`, `split` and `merge`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cogvlm.cli.common import (
    DTYPE_NAMES,
    QUANT_BITS,
    add_download_arguments,
    download_config,
    flag_dtype,
    torch_dtype,
)
from cogvlm.cli.reference_flags import MERGE_INERT, add_inert_flags, inert_notes, print_notes
from cogvlm.errors import CogVLMError


def run_download(args: argparse.Namespace) -> int:
    """Fetch each named checkpoint (if missing) and print where it is."""
    from cogvlm.checkpoints.resolve import resolve_checkpoint

    config = download_config(
        args, keep_archive=args.keep_archive, allow_unverified=args.allow_unverified or None
    )
    for name in args.names:
        print(resolve_checkpoint(name, config))
    return 0


def add_download_parser(commands) -> None:
    """`cogvlm download`."""
    download = commands.add_parser("download", help="download checkpoints into SAT_HOME or the HF cache")
    download.add_argument(
        "names", nargs="+", metavar="NAME", help="catalog name (`cogvlm list`) or HF repo id"
    )
    download.add_argument("--keep_archive", action="store_true", help="keep <name>.zip in SAT_HOME")
    download.add_argument(
        "--allow_unverified",
        action="store_true",
        help="accept an archive no SHA-256 is known for, with a warning (also COGVLM_ALLOW_UNVERIFIED=1)",
    )
    add_download_arguments(download)
    download.set_defaults(handler=run_download)


def run_list(args: argparse.Namespace) -> int:
    """Print the local checkpoints and the catalog."""
    from cogvlm.checkpoints.listing import render_listing

    print(render_listing(download_config(args), as_json=args.json))
    return 0


def add_list_parser(commands) -> None:
    """`cogvlm list`."""
    listing = commands.add_parser("list", help="checkpoints in SAT_HOME and in the catalog")
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_download_arguments(listing)
    listing.set_defaults(handler=run_list)


def run_convert(args: argparse.Namespace) -> int:
    """Convert a checkpoint between the SAT and HF formats."""
    from cogvlm.checkpoints.convert import ConvertConfig, convert_checkpoint, parse_byte_size
    from cogvlm.checkpoints.resolve import resolve_checkpoint

    source = resolve_checkpoint(args.from_pretrained, download_config(args))
    config = ConvertConfig(
        source=source,
        output=Path(args.output),
        target_format=args.to,
        max_shard_bytes=parse_byte_size(args.max_shard_size),
        overwrite=args.overwrite,
        dtype=None if args.dtype is None else torch_dtype(args.dtype),
        quant=_quant_config(args),
        local_tokenizer=args.local_tokenizer,
    )
    result = convert_checkpoint(config)
    print(
        f"{source} ({result.source_format}) -> {result.output} ({result.target_format}): "
        f"{result.num_tensors} tensors, dtype {', '.join(result.dtypes)}"
    )
    return 0


def _quant_config(args: argparse.Namespace):
    from cogvlm.nn.quantized import QuantConfig

    if args.quant is None:
        if args.quant_group_size is not None:
            raise CogVLMError("--quant_group_size needs --quant 4 or --quant 8")
        return None
    return QuantConfig(args.quant, args.quant_group_size)


def add_convert_parser(commands) -> None:
    """`cogvlm convert`."""
    convert = commands.add_parser("convert", help="convert a checkpoint between SAT and HF formats (MP=1)")
    convert.add_argument("--from_pretrained", required=True, help="directory, catalog name or HF repo id")
    convert.add_argument("--output", required=True, help="directory to write (atomically)")
    convert.add_argument(
        "--to", choices=["sat", "hf"], default=None, help="target format (default: the other)"
    )
    convert.add_argument(
        "--max_shard_size", default="5GiB", help="largest HF safetensors shard, e.g. 5GiB, 500MB"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    convert.add_argument(
        "--dtype",
        choices=sorted(DTYPE_NAMES),
        default=None,
        help="cast floating-point weights (default: keep); with it, --to may name the source's own format",
    )
    convert.add_argument(
        "--quant",
        type=int,
        choices=QUANT_BITS,
        default=None,
        help="write int4/int8 weights with their scales (HF layout), loadable directly by chat/serve",
    )
    convert.add_argument(
        "--quant_group_size", type=int, default=None, help="inputs per quantization scale (default: per row)"
    )
    convert.add_argument(
        "--local_tokenizer",
        default=None,
        help="HF output: the tokenizer to ship (default: the source's, else lmsys/vicuna-7b-v1.5 if cached)",
    )
    add_download_arguments(convert)
    convert.set_defaults(handler=run_convert)


def run_split(args: argparse.Namespace) -> int:
    """Split a SAT checkpoint into `--mp` model-parallel ranks."""
    from cogvlm.checkpoints.model_parallel import split_checkpoint

    print(split_checkpoint(args.source, args.target, args.mp))
    return 0


def add_split_parser(commands) -> None:
    """`cogvlm split SOURCE TARGET --mp N`."""
    split = commands.add_parser("split", help="split a SAT checkpoint for N-way tensor parallelism")
    split.add_argument("source", help="SAT checkpoint directory (any model-parallel size)")
    split.add_argument("target", help="directory to write (replaced atomically)")
    split.add_argument("--mp", type=int, required=True, help="model-parallel size of the result")
    split.set_defaults(handler=run_split)


def reference_merge_target(source: str) -> str:
    """The reference's merge_model.py output folder: checkpoints/merged_model_<EVA image size>."""
    from cogvlm.checkpoints.json_files import read_json
    from cogvlm.checkpoints.sat_format import MODEL_CONFIG_FILE

    eva = read_json(Path(source) / MODEL_CONFIG_FILE).get("eva_args")
    size = eva.get("image_size") if isinstance(eva, dict) else None
    if not isinstance(size, list) or not size:
        raise CogVLMError(f"{source}: no eva_args.image_size to name the output after; give TARGET")
    return str(Path("checkpoints") / f"merged_model_{size[0]}")


def _merge_source(args: argparse.Namespace) -> str:
    if args.source and args.from_pretrained and args.source != args.from_pretrained:
        raise CogVLMError(f"two sources: {args.source} and --from_pretrained {args.from_pretrained}")
    source = args.source or args.from_pretrained
    if not source:
        raise CogVLMError("name the checkpoint to merge: SOURCE or --from_pretrained")
    return source


def run_merge(args: argparse.Namespace) -> int:
    """Merge a model-parallel SAT checkpoint back into one rank."""
    import os

    from cogvlm.checkpoints.model_parallel import merge_checkpoint

    rank = os.environ.get("RANK", "0")
    if rank != "0":  # started like merge_model.py, under torchrun: one process does the whole merge
        print(f"cogvlm merge: note: rank {rank} has nothing to do; rank 0 merges", file=sys.stderr)
        return 0
    print_notes(inert_notes(args, "merge"))
    source = _merge_source(args)
    target = args.target or reference_merge_target(source)
    print(merge_checkpoint(source, target, flag_dtype(args)))
    return 0


def add_merge_parser(commands) -> None:
    """`cogvlm merge SOURCE TARGET`, or the reference's `merge_model.py --from_pretrained SOURCE`."""
    merge = commands.add_parser("merge", help="merge a model-parallel SAT checkpoint into MP=1")
    merge.add_argument("source", nargs="?", default=None, help="SAT checkpoint directory (mp_rank_XX files)")
    merge.add_argument(
        "target",
        nargs="?",
        default=None,
        help="directory to write, replaced atomically (default, as the reference's merge_model.py: "
        "checkpoints/merged_model_<image size>)",
    )
    merge.add_argument("--from_pretrained", default=None, help="the source (the reference's flag)")
    merge.add_argument("--bf16", action="store_true", help="store floating-point weights in bfloat16")
    merge.add_argument("--fp16", action="store_true", help="store floating-point weights in float16")
    add_inert_flags(merge, MERGE_INERT)
    merge.set_defaults(handler=run_merge)
