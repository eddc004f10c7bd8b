"""The `cogvlm` command: parses arguments into each feature's config and calls that feature."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch

from cogvlm.embedded import EMBEDDED_NAME, EMBEDDED_SCENE
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
    add_model_arguments(chat, default_checkpoint=EMBEDDED_NAME)
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
        dtype=None if args.dtype is None else DTYPES[args.dtype],
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
    convert.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="cast floating-point weights (default: keep); with it, --to may name the source's own format",
    )
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
    add_model_arguments(serve, default_checkpoint=EMBEDDED_NAME)
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
    add_model_arguments(web, default_checkpoint=EMBEDDED_NAME)
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


def _precision(args: argparse.Namespace) -> str | None:
    chosen = [name for name in ("bf16", "fp16", "fp32") if getattr(args, name)]
    if len(chosen) > 1:
        raise CogVLMError(f"--{' and --'.join(chosen)} are mutually exclusive")
    return chosen[0] if chosen else None


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
        "precision": _precision(args),
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


def _quantization(args: argparse.Namespace) -> dict | None:
    if args.quant is None:
        if args.quant_group_size is not None:
            raise CogVLMError("--quant_group_size needs --quant 4 or --quant 8")
        return None
    return {"bits": args.quant, "group_size": args.quant_group_size}


def finetune_config_from_args(args: argparse.Namespace):
    """The `FinetuneConfig` of `cogvlm finetune`: DeepSpeed JSON values, overridden by explicit flags."""
    from cogvlm.train.config import (
        build_finetune_config,
        merge_settings,
        read_deepspeed_json,
        settings_from_deepspeed_json,
    )

    base = {}
    if args.deepspeed_config:
        base = settings_from_deepspeed_json(read_deepspeed_json(args.deepspeed_config), args.deepspeed_config)
    settings = merge_settings(base, _explicit_training_flags(args))
    settings.update(
        from_pretrained=args.from_pretrained,
        local_tokenizer=args.local_tokenizer,
        save_dir=args.save,
        train_iters=args.train_iters,
        data=dict(
            train_path=args.train_data,
            valid_path=args.valid_data,
            prompt=args.prompt,
            version=args.version,
            max_length=args.max_length,
            num_workers=args.num_workers,
        ),
        lora=_lora_config(args),
        quantization=_quantization(args),
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
        tp_size=args.tp_size,
        seed=args.seed,
        save_interval=args.save_interval,
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
        max_new_tokens=args.max_new_tokens,
        log_interval=args.log_interval,
        resume=not args.no_resume,
        progress_bar=not args.no_progress_bar,
        device=args.device,
    )
    return build_finetune_config(settings)


def run_finetune_command(args: argparse.Namespace) -> int:
    """Fine-tune; rank 0 prints the final evaluation (the trainable-parameter report is logged at start)."""
    import json
    import logging

    from cogvlm.train.distributed import is_rank_zero
    from cogvlm.train.loop import run_finetune

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run_finetune(finetune_config_from_args(args))
    if is_rank_zero() and result.final_evaluation is not None:
        print(json.dumps({"final_evaluation": result.final_evaluation.to_json()}))
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
    group.add_argument("--version", default=None, choices=["base", "chat", "chat_old", "vqa"])
    group.add_argument("--max_length", type=int, default=1288, help="longest sample; longer ones are skipped")
    group.add_argument("--num_workers", type=int, default=0, help="data loader worker processes")


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
        choices=[4, 8],
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
        "--local_tokenizer", default=None, help="tokenizer.model, its folder, or an HF repo id"
    )
    parser.add_argument("--save", required=True, help="run directory: checkpoints, logs; resumed if present")
    _add_data_flags(parser)
    _add_optimisation_flags(parser)
    _add_adapter_flags(parser)
    group = parser.add_argument_group("run")
    group.add_argument(
        "--tp_size", type=int, default=1, help="tensor-parallel size (world = tp x data parallel)"
    )
    group.add_argument(
        "--nproc", type=int, default=1, help="processes on this machine: re-run this command under torchrun"
    )
    group.add_argument("--checkpoint_activations", "--checkpoint-activations", action="store_true")
    group.add_argument("--vision_checkpoint_activations", "--vit_checkpoint_activations", action="store_true")
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
    parser.set_defaults(handler=run_finetune_command)


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Score a checkpoint on a split; prints one JSON object."""
    import json

    from cogvlm.train.evaluation import EvaluateConfig, run_evaluation

    config = EvaluateConfig(
        from_pretrained=args.from_pretrained,
        download=download_config(args),
        data_path=args.data,
        local_tokenizer=args.local_tokenizer,
        version=args.version,
        prompt=args.prompt,
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        limit=args.limit,
        dtype=_dtype(args),
        device=None if args.device == "auto" else args.device,
    )
    result, skipped, is_first_rank = run_evaluation(config)
    if is_first_rank:
        print(json.dumps({**result.to_json(), "skipped_too_long": len(skipped)}))
    return 0


def add_evaluate_parser(commands) -> None:
    """`cogvlm evaluate`."""
    parser = commands.add_parser("evaluate", help="exact-match accuracy and loss of a checkpoint on a split")
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="image folder or .jsonl file")
    parser.add_argument("--prompt", default="CAPTCHA:", help="question asked about a folder's images")
    parser.add_argument("--max_length", type=int, default=1288)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=4, help="samples per forward pass for the loss")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N samples")
    parser.set_defaults(handler=run_evaluate_command)


def run_merge_lora_command(args: argparse.Namespace) -> int:
    """Fold a LoRA checkpoint's adapter into its weights and save a plain SAT checkpoint."""
    from cogvlm.train.adapters import merge_lora_checkpoint

    destination = merge_lora_checkpoint(
        args.from_pretrained, args.save, _dtype(args), onto=args.merge_onto, base=args.base
    )
    print(destination)
    return 0


def add_merge_lora_parser(commands) -> None:
    """`cogvlm merge-lora`."""
    parser = commands.add_parser("merge-lora", help="fold a LoRA adapter into the base weights (SAT output)")
    parser.add_argument("--from_pretrained", required=True, help="LoRA checkpoint (a finetune --save dir)")
    parser.add_argument("--save", required=True, help="output SAT checkpoint directory")
    parser.add_argument("--bf16", action="store_true", help="save in bfloat16")
    parser.add_argument("--fp16", action="store_true", help="save in float16")
    parser.add_argument(
        "--merge_onto",
        choices=["dequantized", "original"],
        default="dequantized",
        help="QLoRA runs: fold the adapter into the dequantized base it was trained on (default; the "
        "result computes what the QLoRA model computes) or into the original floating-point base",
    )
    parser.add_argument("--base", default=None, help="QLoRA runs: the base checkpoint, if it has moved")
    parser.set_defaults(handler=run_merge_lora_command)


def run_export_lora_command(args: argparse.Namespace) -> int:
    """Write the adapter alone in PEFT's format."""
    from cogvlm.train.adapters import export_lora_checkpoint

    print(export_lora_checkpoint(args.from_pretrained, args.save, args.base_model_name_or_path))
    return 0


def add_export_lora_parser(commands) -> None:
    """`cogvlm export-lora`."""
    parser = commands.add_parser("export-lora", help="export a LoRA adapter for Hugging Face PEFT")
    parser.add_argument("--from_pretrained", required=True, help="LoRA checkpoint (a finetune --save dir)")
    parser.add_argument("--save", required=True, help="output adapter directory")
    parser.add_argument("--base_model_name_or_path", default="", help="recorded in adapter_config.json")
    parser.set_defaults(handler=run_export_lora_command)


def run_split_data_command(args: argparse.Namespace) -> int:
    """Split a data set into train/valid/test."""
    import json

    from cogvlm.train.split import SplitConfig, split_dataset

    counts = split_dataset(SplitConfig(args.source, args.dest, tuple(args.fractions), args.seed))
    print(json.dumps(counts))
    return 0


def add_split_data_parser(commands) -> None:
    """`cogvlm split-data`."""
    parser = commands.add_parser("split-data", help="seeded train/valid/test split (copies files)")
    parser.add_argument("--source", required=True, help="image folder or .jsonl file")
    parser.add_argument("--dest", required=True, help="output folder (train/ valid/ test/ or *.jsonl)")
    parser.add_argument(
        "--fractions", type=float, nargs=3, default=[0.8, 0.05, 0.15], metavar=("TRAIN", "VALID", "TEST")
    )
    parser.add_argument("--seed", type=int, default=2023)
    parser.set_defaults(handler=run_split_data_command)


def run_synth_data(args: argparse.Namespace) -> int:
    """Write a synthetic dataset (images, training JSONL and scoring JSONL)."""
    from cogvlm.train.synthetic import DatasetConfig, SceneConfig, write_dataset

    scene = SceneConfig(
        image_px=args.image_px,
        font_px=args.font_px,
        min_object_px=args.min_object_px,
        max_object_px=args.max_object_px,
    )
    print(write_dataset(args.output, DatasetConfig(num_images=args.images, seed=args.seed, scene=scene)))
    return 0


def add_synth_data_parser(commands) -> None:
    """`cogvlm synth-data`."""
    synth = commands.add_parser(
        "synth-data", help="generate shapes-and-text images with questions and answers"
    )
    synth.add_argument("output", help="directory to write")
    synth.add_argument("--images", type=int, required=True)
    synth.add_argument("--seed", type=int, required=True)
    scene = EMBEDDED_SCENE  # defaults: the embedded model's scenes
    synth.add_argument("--image_px", type=int, default=scene.image_px)
    synth.add_argument("--font_px", type=int, default=scene.font_px)
    synth.add_argument("--min_object_px", type=int, default=scene.min_object_px)
    synth.add_argument("--max_object_px", type=int, default=scene.max_object_px)
    synth.set_defaults(handler=run_synth_data)


def run_init_model(args: argparse.Namespace) -> int:
    """Train a tokenizer on a synthetic dataset and write a randomly initialised checkpoint with it."""
    import tempfile
    from pathlib import Path

    from cogvlm.models.presets import preset
    from cogvlm.train.init_model import init_checkpoint
    from cogvlm.train.synthetic import corpus
    from cogvlm.train.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab = preset(args.preset).llm.vocab_size
        tokenizer = train_tokenizer(corpus(args.data), Path(scratch) / "tokenizer.model", vocab)
        print(init_checkpoint(args.preset, tokenizer, args.output, seed=args.seed))
    return 0


def add_init_model_parser(commands) -> None:
    """`cogvlm init-model`."""
    init = commands.add_parser("init-model", help="a random-weight checkpoint and a tokenizer for a dataset")
    init.add_argument("output", help="checkpoint directory to write")
    init.add_argument("--preset", default="embedded-cogvlm")
    init.add_argument("--data", required=True, help="synthetic dataset whose text trains the tokenizer")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(handler=run_init_model)


def run_eval_synthetic(args: argparse.Namespace) -> int:
    """Score a model on a synthetic dataset, per task; prints JSON."""
    import json

    from cogvlm.api import load
    from cogvlm.train.synthetic_eval import evaluate, session_answerer

    session = load(
        args.from_pretrained,
        device=_device(args),
        local_tokenizer=args.local_tokenizer,
        version=args.version,
        download=download_config(args),
    )
    answer = session_answerer(session, args.max_new_tokens)
    scores = evaluate(answer, args.data, session.config.vision.image_px, per_task=args.per_task)
    report = {
        task: {"total": s.total, "correct": s.correct, "accuracy": round(s.accuracy, 4)}
        for task, s in scores.items()
    }
    print(json.dumps(report, indent=2))
    return 0


def add_eval_synthetic_parser(commands) -> None:
    """`cogvlm eval-synthetic`."""
    evaluate = commands.add_parser("eval-synthetic", help="score a model per task on a synthetic dataset")
    add_model_arguments(evaluate)
    evaluate.add_argument("--data", required=True, help="dataset written by `cogvlm synth-data`")
    evaluate.add_argument("--per_task", type=int, default=None, help="at most this many samples per task")
    evaluate.add_argument("--max_new_tokens", type=int, default=32)
    evaluate.set_defaults(handler=run_eval_synthetic)


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
    add_finetune_parser,
    add_evaluate_parser,
    add_merge_lora_parser,
    add_export_lora_parser,
    add_split_data_parser,
    add_synth_data_parser,
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


if __name__ == "__main__":
    sys.exit(main())
