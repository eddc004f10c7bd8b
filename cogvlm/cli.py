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


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """Where checkpoints are kept and fetched from; the flags override the environment variables."""
    parser.add_argument(
        "--sat_home", default=None, help="checkpoint folder (default $SAT_HOME, else ~/.sat_models)"
    )
    parser.add_argument(
        "--endpoint",
        default=None,
        help="Hub-compatible server or mirror (default $COGVLM_ENDPOINT, $HF_ENDPOINT, https://huggingface.co)",
    )
    parser.add_argument(
        "--offline", action="store_true", help="never download (also COGVLM_OFFLINE=1 or HF_HUB_OFFLINE=1)"
    )


def download_config(args: argparse.Namespace, **settings):
    """The `DownloadConfig` of the environment, overridden by the download flags and `settings`."""
    from cogvlm.checkpoints.download import DownloadConfig

    return DownloadConfig.from_environment(
        sat_home=args.sat_home, endpoint=args.endpoint, is_offline=args.offline or None, **settings
    )


def _device(args: argparse.Namespace) -> str:
    if args.device != "auto":
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_model_arguments(parser: argparse.ArgumentParser, default_checkpoint: str | None = None) -> None:
    """The flags every command that loads a model shares (named as in the reference CLI)."""
    parser.add_argument(
        "--from_pretrained",
        required=default_checkpoint is None,
        default=default_checkpoint,
        help="checkpoint: a directory (SAT or HF format), a catalog name (`cogvlm list`) or an HF repo id"
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
    parser.add_argument(
        "--device", default="auto", help="torch device; auto: cuda:LOCAL_RANK if available, else cpu"
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="tensor-parallel ranks: re-run this command under torchrun on N processes",
    )
    add_download_arguments(parser)


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
        download=download_config(args),
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


def run_download(args: argparse.Namespace) -> int:
    """Fetch each named checkpoint (if missing) and print where it is."""
    from cogvlm.checkpoints.resolve import resolve_checkpoint

    config = download_config(args, keep_archive=args.keep_archive)
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
    from pathlib import Path

    from cogvlm.checkpoints.convert import ConvertConfig, convert_checkpoint, parse_byte_size
    from cogvlm.checkpoints.resolve import resolve_checkpoint

    source = resolve_checkpoint(args.from_pretrained, download_config(args))
    config = ConvertConfig(
        source=source,
        output=Path(args.output),
        target_format=args.to,
        max_shard_bytes=parse_byte_size(args.max_shard_size),
        overwrite=args.overwrite,
    )
    result = convert_checkpoint(config)
    print(
        f"{source} ({result.source_format}) -> {result.output} ({result.target_format}): "
        f"{result.num_tensors} tensors, dtype {', '.join(result.dtypes)}"
    )
    return 0


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
    add_download_arguments(convert)
    convert.set_defaults(handler=run_convert)


def run_split(args: argparse.Namespace) -> int:
    """Split a SAT checkpoint into `--mp` model-parallel ranks."""
    from cogvlm.checkpoints.model_parallel import split_checkpoint

    print(split_checkpoint(args.source, args.target, args.mp))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """Merge a model-parallel SAT checkpoint back into one rank."""
    from cogvlm.checkpoints.model_parallel import merge_checkpoint

    print(merge_checkpoint(args.source, args.target))
    return 0


def add_split_parser(commands) -> None:
    """`cogvlm split SOURCE TARGET --mp N`."""
    split = commands.add_parser("split", help="split a SAT checkpoint for N-way tensor parallelism")
    split.add_argument("source", help="SAT checkpoint directory (any model-parallel size)")
    split.add_argument("target", help="directory to write (replaced atomically)")
    split.add_argument("--mp", type=int, required=True, help="model-parallel size of the result")
    split.set_defaults(handler=run_split)


def add_merge_parser(commands) -> None:
    """`cogvlm merge SOURCE TARGET`."""
    merge = commands.add_parser("merge", help="merge a model-parallel SAT checkpoint into MP=1")
    merge.add_argument("source", help="SAT checkpoint directory with mp_rank_XX files")
    merge.add_argument("target", help="directory to write (replaced atomically)")
    merge.set_defaults(handler=run_merge)


def run_serve(args: argparse.Namespace) -> int:
    """Serve the model over an OpenAI-compatible HTTP API."""
    import os

    from cogvlm.api import load
    from cogvlm.inference.server.config import ServerConfig
    from cogvlm.inference.server.run import serve

    config = ServerConfig(
        host=args.host,
        port=args.port,
        model_id=args.model_id or os.path.basename(os.path.normpath(args.from_pretrained)),
        api_key=args.api_key or os.environ.get("COGVLM_API_KEY") or None,
        max_active=args.max_active,
        max_queue=args.max_queue,
        request_timeout_s=args.timeout,
        default_max_tokens=args.default_max_tokens,
        max_image_pixels=args.max_image_pixels,
        allow_remote_images=args.allow_remote_images,
        allow_file_images=args.allow_file_images,
    )
    session = load(
        args.from_pretrained,
        dtype=_dtype(args),
        device=_device(args),
        local_tokenizer=args.local_tokenizer,
        version=args.version,
        download=download_config(args),
    )
    serve(session, config)
    return 0


def add_serve_parser(commands) -> None:
    """`cogvlm serve`."""
    serve = commands.add_parser("serve", help="OpenAI-compatible chat-completions server")
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model-id", default=None, help="model name reported by /v1/models")
    serve.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set COGVLM_API_KEY)"
    )
    serve.add_argument("--max-active", type=int, default=4, help="requests generated at once")
    serve.add_argument("--max-queue", type=int, default=32, help="requests waiting; beyond this: HTTP 429")
    serve.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take")
    serve.add_argument("--default-max-tokens", type=int, default=512)
    serve.add_argument("--max-image-pixels", type=int, default=4096 * 4096)
    serve.add_argument(
        "--allow-remote-images", action="store_true", help="let the server fetch http(s) image URLs"
    )
    serve.add_argument(
        "--allow-file-images", action="store_true", help="let the server read file:// image URLs"
    )
    serve.set_defaults(handler=run_serve)


def run_web(args: argparse.Namespace) -> int:
    """Serve the Gradio web demo."""
    from cogvlm.api import load
    from cogvlm.inference.web import WebConfig, run_web

    session = load(
        args.from_pretrained,
        dtype=_dtype(args),
        device=_device(args),
        local_tokenizer=args.local_tokenizer,
        version=args.version,
        download=download_config(args),
    )
    run_web(session, WebConfig(host=args.host, port=args.port, max_length=args.max_length))
    return 0


def add_web_parser(commands) -> None:
    """`cogvlm web`."""
    web = commands.add_parser("web", help="Gradio web demo")
    add_model_arguments(web)
    web.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    web.add_argument("--port", type=int, default=7860)
    web.add_argument("--max_length", type=int, default=2048)
    web.set_defaults(handler=run_web)


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
SUBCOMMANDS = (
    add_chat_parser,
    add_download_parser,
    add_list_parser,
    add_convert_parser,
    add_split_parser,
    add_merge_parser,
    add_serve_parser,
    add_web_parser,
    add_bench_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="cogvlm", description="CogVLM and CogAgent visual-language models")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
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


if __name__ == "__main__":
    sys.exit(main())
