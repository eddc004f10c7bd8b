"""Flags and translations that several `cogvlm` subcommands share: dtype, device, download and model flags."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cogvlm.errors import CogVLMError

if TYPE_CHECKING:
    import torch

# torch is imported where a command runs, not here: `cogvlm --help` and parsing stay fast.
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PROMPT_VERSIONS = ["base", "chat", "chat_old", "vqa"]
PROMPT_STYLES = ["sat", "hf"]  # text_processors.prompts.PROMPT_STYLES
DECODE_STEPS = ["eager", "compiled", "static", "cuda_graph"]  # decode_step.DECODE_STEP_KINDS
QUANT_BITS = [4, 8]


def chosen_precision(args: argparse.Namespace, names: Sequence[str] = ("bf16", "fp16")) -> str | None:
    """The one precision flag among `names` that was given, or None; giving two is an error."""
    chosen = [name for name in names if getattr(args, name)]
    if len(chosen) > 1:
        raise CogVLMError(f"--{' and --'.join(chosen)} are mutually exclusive")
    return chosen[0] if chosen else None


def flag_dtype(args: argparse.Namespace) -> torch.dtype | None:
    """The dtype that --bf16 or --fp16 asks for; None leaves the choice to the feature."""
    precision = chosen_precision(args)
    return None if precision is None else torch_dtype(precision)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision flag's name (`fp32`, `bf16`, `fp16`)."""
    import torch

    return getattr(torch, DTYPE_NAMES[name])


def flag_device(args: argparse.Namespace) -> str:
    """--device, with `auto` resolved to cuda when a GPU is visible, else cpu."""
    if args.device != "auto":
        return args.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
        "--tokenizer",
        dest="local_tokenizer",
        default=None,
        help="tokenizer.model file, its directory, or an HF repo id (fetched into the HF cache if missing); "
        "default: the checkpoint's own, else lmsys/vicuna-7b-v1.5",
    )
    parser.add_argument("--version", default=None, choices=PROMPT_VERSIONS, help="prompt format")
    parser.add_argument(
        "--prompt_style",
        default="sat",
        choices=PROMPT_STYLES,
        help="sat (default): prompts as the SAT code writes them; hf: as the HF port's remote code does "
        "(CogAgent vqa/chat_old keep a literal <EOI>, CogVLM vqa keeps the history)",
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


def sampling_settings(args: argparse.Namespace, **extra):
    """`GenerationSettings` of the sampling flags `chat` and `caption` share (None: the model's default)."""
    from cogvlm.inference.settings import GenerationSettings

    return GenerationSettings(
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        stop_strings=tuple(args.stop),
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        semantics=args.sampler,
        seed=args.seed,
        **extra,
    )


def model_source(
    args: argparse.Namespace,
    dtype: torch.dtype | None,
    quant_bits: int | None = None,
    quant_group_size: int | None = None,
):
    """The `cogvlm.api.ModelSource` of the model flags (`add_model_arguments`), in `dtype`, quantized to
    `quant_bits` if given."""
    from cogvlm.api import ModelSource

    return ModelSource(
        checkpoint=args.from_pretrained,
        local_tokenizer=args.local_tokenizer,
        version=args.version,
        prompt_style=args.prompt_style,
        dtype=dtype,
        device=args.device,
        download=download_config(args),
        quant_bits=quant_bits,
        quant_group_size=quant_group_size,
    )


def load_session(
    args: argparse.Namespace,
    dtype: torch.dtype | None,
    quant_bits: int | None = None,
    quant_group_size: int | None = None,
    runtime=None,
):
    """The `cogvlm.api` session of the model flags. Under a tensor-parallel `runtime`
    (`cogvlm.launch.distributed`) this rank loads its shard on its own device (cuda:LOCAL_RANK for
    `--device auto`); without one, "auto" is `flag_device`'s choice."""
    from cogvlm.parallel.groups import NO_PARALLEL

    source = model_source(args, dtype, quant_bits, quant_group_size)
    if runtime is None:
        return source.load(flag_device(args), NO_PARALLEL)
    return source.load(runtime.device, runtime.tp)


def announce_embedded(args: argparse.Namespace) -> None:
    """One line on stderr when an interactive front-end starts with the embedded toy model."""
    import sys

    from cogvlm.embedded import EMBEDDED_NOTICE, is_embedded

    if is_embedded(args.from_pretrained):
        print(EMBEDDED_NOTICE, file=sys.stderr, flush=True)
