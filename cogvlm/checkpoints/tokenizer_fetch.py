"""Tokenizer first: find or fetch a checkpoint's `tokenizer.model` before any of its weights is read.

The published checkpoints ship no tokenizer: they use `lmsys/vicuna-7b-v1.5`'s `tokenizer.model`. Looking
for it only after a 35 GB download and load would tell a new user too late, so the loaders call
`checkpoint_tokenizer` first. A repo id the Hugging Face cache lacks is fetched (that one file) into the
cache with huggingface_hub, from `--endpoint`/`$COGVLM_ENDPOINT`/`$HF_ENDPOINT`, into `$HF_HUB_CACHE` or
`$HF_HOME/hub`, never in offline mode (`--offline`, `$COGVLM_OFFLINE`, `$HF_HUB_OFFLINE`); when it cannot be
had, the error names the file, the repository and the command that gets it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cogvlm.checkpoints.download import DownloadConfig, notify
from cogvlm.checkpoints.resolve import local_checkpoint
from cogvlm.errors import TokenizerError
from cogvlm.text_processors.tokenizer import (
    DEFAULT_TOKENIZER,
    TOKENIZER_FILE,
    LlamaTokenizer,
    find_tokenizer_file,
    hub_cache_dir,
    looks_like_repo_id,
)


def tokenizer_cache(config: DownloadConfig) -> Path:
    """The HF hub cache the tokenizer is looked up in and fetched into."""
    return config.hf_cache_dir if config.hf_cache_dir is not None else hub_cache_dir()


def checkpoint_tokenizer(
    checkpoint: str | os.PathLike, local_tokenizer: str | None = None, config: DownloadConfig | None = None
) -> LlamaTokenizer:
    """The tokenizer of `checkpoint` (as `--from_pretrained` names it), found before any weight is read.

    `local_tokenizer` (a `tokenizer.model`, its folder, or an HF repo id) comes first; else a
    `tokenizer.model` beside a checkpoint already on disk; else `lmsys/vicuna-7b-v1.5`. A repo id that is
    not in the HF cache is fetched into it (see the module docstring).

    Raises:
        TokenizerError: it is nowhere and cannot be fetched; the message says how to get it.
    """
    config = config or DownloadConfig.from_environment()
    cache = tokenizer_cache(config)
    directory = local_checkpoint(checkpoint, config)
    try:
        path = find_tokenizer_file(directory, local_tokenizer, cache)
    except TokenizerError:
        name = DEFAULT_TOKENIZER if local_tokenizer is None else local_tokenizer
        if not looks_like_repo_id(name):
            raise
        path = fetch_tokenizer(name, config)
    return LlamaTokenizer.from_file(path)


def how_to_get(repo_id: str, cache: Path) -> str:
    """What a user can do when `repo_id`'s tokenizer cannot be had here."""
    return (
        f"to get it, run `hf download {repo_id} {TOKENIZER_FILE} --cache-dir {cache}` where the Hub (or "
        f"a mirror named by HF_ENDPOINT) can be reached, with HF_HUB_OFFLINE and COGVLM_OFFLINE unset; "
        f"or pass a {TOKENIZER_FILE} you have: --tokenizer PATH (Python: load(..., local_tokenizer=PATH))"
    )


def fetch_tokenizer(repo_id: str, config: DownloadConfig) -> Path:
    """Download `repo_id`'s `tokenizer.model` into the HF cache (or find it there); its path."""
    cache = tokenizer_cache(config)
    wanted = f"{TOKENIZER_FILE} of {repo_id}"
    if config.is_offline:
        raise TokenizerError(
            f"tokenizer: {wanted} is not in the Hugging Face cache {cache} and offline mode is on "
            f"(--offline, COGVLM_OFFLINE or HF_HUB_OFFLINE); {how_to_get(repo_id, cache)}"
        )
    try:
        import huggingface_hub
        from huggingface_hub.utils import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:
        raise TokenizerError(
            f"tokenizer: fetching {wanted} needs huggingface_hub (pip install 'cogvlm[hub]'); "
            + how_to_get(repo_id, cache)
        ) from None
    notify(config, f"tokenizer: fetching {wanted} from {config.endpoint} into {cache}")
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id, TOKENIZER_FILE, endpoint=config.endpoint, cache_dir=cache, etag_timeout=config.timeout_s
        )
    except LocalEntryNotFoundError as error:  # unreachable, or offline by huggingface_hub's own setting
        reason = f"{config.endpoint} cannot be reached ({error.__cause__ or error})"
        raise TokenizerError(
            f"tokenizer: {wanted} is not in {cache} and {reason}; {how_to_get(repo_id, cache)}"
        ) from None
    except (RepositoryNotFoundError, EntryNotFoundError):
        raise TokenizerError(
            f"tokenizer: {config.endpoint} has no {wanted}; pass --tokenizer PATH or --local_tokenizer "
            f"with a {TOKENIZER_FILE}, its folder or a repository that has one"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise TokenizerError(
            f"tokenizer: fetching {wanted} from {config.endpoint} failed ({error}); "
            + how_to_get(repo_id, cache)
        ) from None
    return Path(path)
