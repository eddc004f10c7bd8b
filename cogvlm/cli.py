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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every command that loads a model shares (named as in the reference CLI)."""
    parser.add_argument("--from_pretrained", required=True, help="checkpoint directory (SAT or HF format)")
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
    """One question about one image; prints the answer."""
    from cogvlm.api import load
    from cogvlm.inference.generate import GenerationConfig
    from cogvlm.inference.sampling import SamplingConfig

    session = load(
        args.from_pretrained,
        dtype=_dtype(args),
        device=args.device,
        local_tokenizer=args.local_tokenizer,
        version=args.version,
    )
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    generation = GenerationConfig(
        max_length=args.max_length,
        end_token_ids=(session.tokenizer.eos_id,),
        sampling=sampling,
        seed=args.seed,
    )
    result = session.chat(args.image or None, args.query, generation=generation)
    print(result.response)
    return 0


def add_chat_parser(commands) -> None:
    """`cogvlm chat`."""
    chat = commands.add_parser("chat", help="answer a question about an image")
    add_model_arguments(chat)
    chat.add_argument("--image", default="", help="image path (empty: text only)")
    chat.add_argument("--query", required=True, help="the question")
    chat.add_argument(
        "--max_length", type=int, default=2048, help="total tokens: prompt, image slots and answer"
    )
    chat.add_argument("--top_p", type=float, default=0.4)
    chat.add_argument("--top_k", type=int, default=1)
    chat.add_argument("--temperature", type=float, default=0.8)
    chat.add_argument("--seed", type=int, default=None)
    chat.set_defaults(handler=run_chat)


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
        device=args.device,
        local_tokenizer=args.local_tokenizer,
        version=args.version,
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
        device=args.device,
        local_tokenizer=args.local_tokenizer,
        version=args.version,
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


# One entry per subcommand; each adds its parser and sets `handler`.
SUBCOMMANDS = (add_chat_parser, add_serve_parser, add_web_parser)


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
