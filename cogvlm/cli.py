"""The `cogvlm` command: parses arguments into each feature's config and calls that feature."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch

from cogvlm.errors import CogVLMError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _dtype(args: argparse.Namespace) -> torch.dtype | None:
    if args.bf16 and args.fp16:
        raise CogVLMError("--bf16 and --fp16 are mutually exclusive")
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None


def add_model_arguments(parser: argparse.ArgumentParser, default_checkpoint: str | None = None) -> None:
    """The flags every command that loads a model shares (named as in the reference CLI)."""
    parser.add_argument(
        "--from_pretrained",
        required=default_checkpoint is None,
        default=default_checkpoint,
        help="checkpoint directory (SAT or HF format)"
        + (f"; default {default_checkpoint}" if default_checkpoint else ""),
    )
    parser.add_argument(
        "--local_tokenizer",
        default=None,
        help="tokenizer.model file, its directory, or an HF repo id in the local cache",
    )
    parser.add_argument(
        "--version", default=None, choices=["base", "chat", "chat_old", "vqa"], help="prompt format"
    )
    parser.add_argument("--bf16", action="store_true", help="run in bfloat16")
    parser.add_argument("--fp16", action="store_true", help="run in float16")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def run_chat(args: argparse.Namespace) -> int:
    """Interactive chat about images, or one answer with --image/--query."""
    from cogvlm.inference.chat import ChatConfig, run_chat
    from cogvlm.inference.generate import GenerationConfig
    from cogvlm.inference.sampling import SamplingConfig

    sampling = SamplingConfig(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        semantics=args.sampler,
    )
    generation = GenerationConfig(
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        end_token_ids=(2,),
        stop_strings=tuple(args.stop),
        sampling=sampling,
        seed=args.seed,
        decode_step=args.decode_step,
    )
    config = ChatConfig(
        checkpoint=args.from_pretrained,
        local_tokenizer=args.local_tokenizer,
        version=args.version,
        dtype=_dtype(args),
        device=args.device,
        quant_bits=args.quant,
        quant_group_size=args.quant_group_size,
        generation=generation,
        stream=args.stream_chat,
        chinese=args.chinese,
        image=args.image,
        query=args.query,
        grounding_dir=args.grounding_dir,
    )
    return run_chat(config)


def add_chat_parser(commands) -> None:
    """`cogvlm chat`: the reference CLI's flags and defaults."""
    chat = commands.add_parser("chat", help="chat about images (interactive), or answer one --query")
    add_model_arguments(chat, default_checkpoint="cogagent-chat")
    chat.add_argument("--image", default=None, help="one-shot mode: image path or URL ('' for text only)")
    chat.add_argument("--query", default=None, help="one-shot mode: the question (prints the answer)")
    chat.add_argument(
        "--max_length", type=int, default=2048, help="total tokens: prompt, image slots and answer"
    )
    chat.add_argument("--max_new_tokens", type=int, default=None, help="cap on generated tokens")
    chat.add_argument("--top_p", type=float, default=0.4)
    chat.add_argument("--top_k", type=int, default=1, help="1 (the default) is greedy")
    chat.add_argument("--temperature", type=float, default=0.8)
    chat.add_argument("--repetition_penalty", type=float, default=1.0)
    chat.add_argument(
        "--sampler",
        choices=["reference", "standard"],
        default="reference",
        help="reference: SAT's semantics (top-p only with top-k, penalty on generated tokens only)",
    )
    chat.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--quant", type=int, choices=[4, 8], default=None, help="weight-only int4/int8")
    chat.add_argument(
        "--quant_group_size", type=int, default=None, help="int4/int8 group size (default: per row)"
    )
    chat.add_argument("--stream_chat", action="store_true", help="print the reply as it is generated")
    chat.add_argument(
        "--decode_step",
        choices=["eager", "static", "cuda_graph"],
        default="eager",
        help="cuda_graph: replay each decoding step as one CUDA graph (GPU only)",
    )
    chat.add_argument("--chinese", action="store_true", help="Chinese prompts")
    chat.add_argument("--grounding_dir", default=None, help="where images with drawn boxes go (default: tmp)")
    chat.set_defaults(handler=run_chat)


def run_bench(args: argparse.Namespace) -> int:
    """Print the benchmark figures of one config as JSON."""
    import json
    from pathlib import Path

    from cogvlm.inference.bench import BenchConfig, run_bench

    config = BenchConfig(
        name=args.config,
        image=Path(args.image),
        tokenizer=Path(args.tokenizer),
        device=args.device,
        dtype=args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"),
        threads=args.threads,
        new_tokens=args.new_tokens,
        batch_size=args.batch_size,
        repeats=args.repeats,
        quant_bits=args.quant,
        decode_step=args.decode_step or ("cuda_graph" if args.device.startswith("cuda") else "eager"),
    )
    print(json.dumps(run_bench(config), indent=2))
    return 0


def add_bench_parser(commands) -> None:
    """`cogvlm bench`."""
    from cogvlm.inference.bench import bench_config_names, default_asset

    bench = commands.add_parser("bench", help="measure speed and memory of a named config (prints JSON)")
    bench.add_argument("config", choices=bench_config_names(), help="tiny, small-* (CPU) or full size (CUDA)")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--dtype", default=None, help="float32 (the protocol's, default on CPU) or bfloat16")
    bench.add_argument("--threads", type=int, default=2, help="torch CPU threads (the protocol: 2)")
    bench.add_argument("--new_tokens", type=int, default=64)
    bench.add_argument("--batch_size", type=int, default=4, help="rows of the batched decode figure")
    bench.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported")
    bench.add_argument("--quant", type=int, choices=[4, 8], default=None)
    bench.add_argument(
        "--decode_step",
        choices=["eager", "static", "cuda_graph"],
        default=None,
        help="how decoding steps run (default: cuda_graph on CUDA, eager on CPU)",
    )
    bench.add_argument("--image", default=str(default_asset("test_image.png")))
    bench.add_argument("--tokenizer", default=str(default_asset("tokenizer.model")))
    bench.set_defaults(handler=run_bench)


# One entry per subcommand; each adds its parser and sets `handler`.
SUBCOMMANDS = (add_chat_parser, add_bench_parser)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="cogvlm", description="CogVLM and CogAgent visual-language models")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_parser in SUBCOMMANDS:
        add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cogvlm` console script."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (CogVLMError, ValueError, FileNotFoundError) as error:
        if args.debug:
            raise
        print(f"cogvlm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
