"""`cogvlm serve` (OpenAI-compatible HTTP API) and `cogvlm web` (Gradio demo)."""

from __future__ import annotations

import argparse

from cogvlm.cli.common import QUANT_BITS, add_model_arguments, announce_embedded, flag_dtype, load_session
from cogvlm.embedded import EMBEDDED_NAME


def add_address_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    """--host and --port of a server, bound to loopback unless asked otherwise."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=default_port)


def add_quant_arguments(parser: argparse.ArgumentParser) -> None:
    """--quant and --quant_group_size, as `cogvlm chat` has them."""
    parser.add_argument("--quant", type=int, choices=QUANT_BITS, default=None, help="weight-only int4/int8")
    parser.add_argument(
        "--quant_group_size", type=int, default=None, help="int4/int8 group size (default: per row)"
    )


def run_on_every_rank(args: argparse.Namespace, run) -> None:
    """`run(session, runtime)` after every rank (under torchrun) joined the job and loaded its shard of the
    model; the process group is left however `run` ends."""
    from cogvlm.launch.distributed import init_parallel_runtime, shutdown

    announce_embedded(args)
    runtime = init_parallel_runtime()
    try:
        run(load_session(args, flag_dtype(args), args.quant, args.quant_group_size, runtime), runtime)
    finally:
        shutdown(runtime)


def run_serve(args: argparse.Namespace) -> int:
    """Serve the model over an OpenAI-compatible HTTP API."""
    import os

    from cogvlm.frontends.server.config import ServerConfig
    from cogvlm.frontends.server.run import serve

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
        max_request_bytes=args.max_request_bytes,
        max_buffered_bytes=args.max_buffered_bytes,
        body_timeout_s=args.body_timeout,
        allow_remote_images=args.allow_remote_images,
        allow_file_images=args.allow_file_images,
        remote_image_timeout_s=args.remote_image_timeout,
        compiled_decode=args.compile,
    )
    run_on_every_rank(args, lambda session, runtime: serve(session, config, runtime))
    return 0


def add_serve_parser(commands) -> None:
    """`cogvlm serve`."""
    serve = commands.add_parser("serve", help="OpenAI-compatible chat-completions server")
    add_model_arguments(serve, default_checkpoint=EMBEDDED_NAME)
    add_address_arguments(serve, default_port=8000)
    add_quant_arguments(serve)
    serve.add_argument("--model-id", default=None, help="model name reported by /v1/models")
    serve.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set COGVLM_API_KEY)"
    )
    serve.add_argument("--max-active", type=int, default=4, help="requests decoded together (one batch)")
    serve.add_argument(
        "--compile",
        action="store_true",
        help="run decoding steps through torch.compile (compiled at start-up, before serving)",
    )
    serve.add_argument("--max-queue", type=int, default=32, help="requests waiting; beyond this: HTTP 429")
    serve.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take")
    serve.add_argument(
        "--default-max-tokens", type=int, default=None, help="default: the model's (as chat and web)"
    )
    serve.add_argument("--max-image-pixels", type=int, default=4096 * 4096)
    serve.add_argument(
        "--max-request-bytes", type=int, default=32 << 20, help="largest request body (HTTP 413)"
    )
    serve.add_argument(
        "--max-buffered-bytes",
        type=int,
        default=256 << 20,
        help="request bytes being read at once, all clients together; beyond this: HTTP 503",
    )
    serve.add_argument(
        "--body-timeout", type=float, default=60.0, help="seconds a request body may take (HTTP 408)"
    )
    serve.add_argument(
        "--allow-remote-images", action="store_true", help="let the server fetch http(s) image URLs"
    )
    serve.add_argument(
        "--remote-image-timeout", type=float, default=10.0, help="seconds an http(s) image fetch may take"
    )
    serve.add_argument(
        "--allow-file-images", action="store_true", help="let the server read file:// image URLs"
    )
    serve.set_defaults(handler=run_serve)


def run_web(args: argparse.Namespace) -> int:
    """Serve the Gradio web demo."""
    from cogvlm.frontends import web

    config = web.WebConfig(
        host=args.host,
        port=args.port,
        max_length=args.max_length,
        max_active=args.max_active,
        max_queue=args.max_queue,
    )
    run_on_every_rank(args, lambda session, runtime: web.run_web(session, config, runtime))
    return 0


def add_web_parser(commands) -> None:
    """`cogvlm web`."""
    web = commands.add_parser("web", help="Gradio web demo")
    add_model_arguments(web, default_checkpoint=EMBEDDED_NAME)
    add_address_arguments(web, default_port=7860)
    add_quant_arguments(web)
    web.add_argument("--max-active", type=int, default=4, help="answers decoded together (one batch)")
    web.add_argument(
        "--max_length", type=int, default=None, help="total tokens per answer (default: the model's context)"
    )
    web.add_argument("--max-queue", type=int, default=32, help="requests waiting; beyond this: refused")
    web.set_defaults(handler=run_web)
