"""`cogvlm chat` and `cogvlm bench`: generation from the command line, and its speed."""

from __future__ import annotations

import argparse
import sys

from cogvlm.cli.common import (
    DECODE_STEPS,
    QUANT_BITS,
    add_model_arguments,
    flag_dtype,
    model_source,
    sampling_settings,
)
from cogvlm.embedded import EMBEDDED_NAME
from cogvlm.errors import CogVLMError, ConfigError


def _query(args: argparse.Namespace) -> str | None:
    """--query, or the empty one the reference's --no_prompt asks an --image with; --english is checked."""
    if args.english and args.chinese:
        raise ConfigError("--english and --chinese are mutually exclusive")
    if not args.no_prompt or args.query is not None:
        return args.query
    if args.image is None:
        print("cogvlm chat: note: --no_prompt applies to an --image given here; ignored", file=sys.stderr)
        return None
    return ""


def run_chat(args: argparse.Namespace) -> int:
    """Interactive chat about images, or one answer with --image/--query."""
    from cogvlm.frontends import chat

    generation = sampling_settings(args, decode_step=args.decode_step)
    config = chat.ChatConfig(
        model=model_source(args, flag_dtype(args), args.quant, args.quant_group_size),
        generation=generation,
        stream=args.stream_chat,
        chinese=args.chinese,
        image=args.image,
        query=_query(args),
        grounding_dir=args.grounding_dir,
    )
    return chat.run_chat(config)


def add_chat_parser(commands) -> None:
    """`cogvlm chat`: the reference CLI's flags and defaults."""
    chat = commands.add_parser("chat", help="chat about images (interactive), or answer one --query")
    add_model_arguments(chat, default_checkpoint=EMBEDDED_NAME)
    chat.add_argument(
        "--image",
        default=None,
        help="image path or URL: with --query one-shot ('' for text only), else chat about it",
    )
    chat.add_argument("--query", default=None, help="one-shot mode: the question (prints the answer)")
    # Sampling and length flags default to the checkpoint's generation defaults (`cogvlm.inference.settings`):
    # the reference CLI's greedy settings unless the checkpoint ships a generation_config.json.
    chat.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="total tokens: prompt, image slots and answer (default and cap: the model's context)",
    )
    chat.add_argument("--max_new_tokens", type=int, default=None, help="cap on generated tokens")
    chat.add_argument("--top_p", type=float, default=None, help="default 0.4 (the reference's)")
    chat.add_argument("--top_k", type=int, default=None, help="default 1: greedy (the reference's)")
    chat.add_argument("--temperature", type=float, default=None, help="default 0.8 (the reference's)")
    chat.add_argument("--repetition_penalty", type=float, default=None, help="default 1.0 (none)")
    chat.add_argument(
        "--sampler",
        choices=["reference", "standard"],
        default=None,
        help="reference (default): SAT's semantics (top-p only with top-k, penalty on generated tokens only)",
    )
    chat.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--quant", type=int, choices=QUANT_BITS, default=None, help="weight-only int4/int8")
    chat.add_argument(
        "--quant_group_size", type=int, default=None, help="int4/int8 group size (default: per row)"
    )
    chat.add_argument("--stream_chat", action="store_true", help="print the reply as it is generated")
    chat.add_argument(
        "--decode_step",
        choices=DECODE_STEPS,
        default="eager",
        help="compiled: torch.compile the step (fastest on CPU after a one-off compilation); "
        "cuda_graph: replay each decoding step as one CUDA graph (GPU only)",
    )
    chat.add_argument("--chinese", action="store_true", help="Chinese prompts")
    chat.add_argument("--english", action="store_true", help="English prompts (the default)")
    chat.add_argument(
        "--no_prompt",
        action="store_true",
        help="with --image and no --query: answer the image alone (an empty query), as the reference's demo",
    )
    chat.add_argument(
        "--grounding_dir",
        default=None,
        help="keep each image with drawn boxes in this folder (default: one file per session in tmp)",
    )
    chat.set_defaults(handler=run_chat)


def run_bench(args: argparse.Namespace) -> int:
    """Print the benchmark figures of one config as JSON."""
    import json
    from pathlib import Path

    from cogvlm.frontends import bench

    is_cuda = args.device.startswith("cuda")
    config = bench.BenchConfig(
        name=args.config,
        image=Path(args.image),
        tokenizer=Path(args.tokenizer),
        device=args.device,
        dtype=args.dtype or ("bfloat16" if is_cuda else "float32"),
        threads=args.threads,
        new_tokens=args.new_tokens,
        batch_size=args.batch_size,
        repeats=args.repeats,
        quant_bits=args.quant,
        decode_step=args.decode_step or ("cuda_graph" if is_cuda else "compiled"),
    )
    if args.compare_quant and args.quant is not None:
        raise CogVLMError("--compare_quant measures unquantized, int8 and int4 itself: drop --quant")
    run = bench.run_quant_comparison if args.compare_quant else bench.run_bench
    print(json.dumps(run(config), indent=2))
    return 0


def add_bench_parser(commands) -> None:
    """`cogvlm bench`."""
    from cogvlm.frontends.bench_protocol import bench_config_names, default_asset

    bench = commands.add_parser("bench", help="measure speed and memory of a named config (prints JSON)")
    bench.add_argument("config", choices=bench_config_names(), help="tiny, small-* (CPU) or full size (CUDA)")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--dtype", default=None, help="float32 (the protocol's, default on CPU) or bfloat16")
    bench.add_argument("--threads", type=int, default=2, help="torch CPU threads (the protocol: 2)")
    bench.add_argument("--new_tokens", type=int, default=64)
    bench.add_argument("--batch_size", type=int, default=4, help="rows of the batched decode figure")
    bench.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported")
    bench.add_argument("--quant", type=int, choices=QUANT_BITS, default=None)
    bench.add_argument(
        "--compare_quant",
        action="store_true",
        help="measure the config unquantized, int8 and int4 in one run, repeats interleaved, with the ratios",
    )
    bench.add_argument(
        "--decode_step",
        choices=DECODE_STEPS,
        default=None,
        help="how decoding steps run (default: cuda_graph on CUDA, compiled on CPU)",
    )
    bench.add_argument("--image", default=str(default_asset("test_image.png")))
    bench.add_argument("--tokenizer", default=str(default_asset("tokenizer.model")))
    bench.set_defaults(handler=run_bench)
