"""`--from_pretrained X`: a local directory, a catalog name under $SAT_HOME (fetched if missing), an HF repo.

SAT archives are downloaded once per SAT_HOME: a file lock (`$SAT_HOME/.locks/<name>.lock`) makes every
other process (every torchrun rank) wait and then use the extracted folder. The lock holder also owns
what earlier runs of that name left: staging folders of an interrupted extraction are removed, and a
verified archive in `.downloads/` is extracted without downloading it again. HF repositories go through
huggingface_hub and its cache, which has its own locks, resume and offline mode.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from cogvlm.checkpoints.archive import ArchiveWriteError, extract_checkpoint_archive
from cogvlm.checkpoints.catalog import ALIASES, CATALOG, CatalogEntry, archive_url, find_entry
from cogvlm.checkpoints.download import DownloadConfig, fetch_file, notify, record_path, verified_record
from cogvlm.embedded import EMBEDDED_NAME, embedded_checkpoint
from cogvlm.errors import CheckpointError, DownloadError

LOCK_DIR = ".locks"
DOWNLOAD_DIR = ".downloads"
STAGING_INFIX = ".tmp-"  # `atomic_directory` stages `<parent>/.<name>.tmp-<random>` beside its target
# What an HF-format checkpoint needs: no remote code, no tokenizer (the published repos ship none).
HF_PATTERNS = ("config.json", "*.safetensors", "model.safetensors.index.json")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")


def resolve_checkpoint(name_or_path: str | os.PathLike, config: DownloadConfig | None = None) -> Path:
    """The local directory for a path, a catalog name or folder under $SAT_HOME, or an HF repo id."""
    config = config or DownloadConfig.from_environment()
    text, local = _classify(name_or_path)
    if local is not None:
        return local
    if _REPO_ID.fullmatch(text):
        return fetch_hf_repo(text, config)
    return fetch_named(text, config)


def local_checkpoint(name_or_path: str | os.PathLike, config: DownloadConfig | None = None) -> Path | None:
    """The directory `resolve_checkpoint` would return without fetching or extracting anything; None when
    it would have to. Raises the errors `resolve_checkpoint` raises before any network access.

    Lets a caller look beside a checkpoint (for its tokenizer) before any weight is downloaded or read.
    """
    config = config or DownloadConfig.from_environment()
    text, local = _classify(name_or_path)
    if local is not None:
        return local
    if _REPO_ID.fullmatch(text):
        return _cached_snapshot(text, None, config)
    own = config.sat_home / text
    if own.is_dir():
        return own
    entry = _catalog_entry(text, own)
    own = config.sat_home / entry.name
    if own.is_dir():
        return own
    return cached_hf_repo(entry, config) if entry.format == "hf" else None


def _classify(name_or_path: str | os.PathLike) -> tuple[str, Path | None]:
    """The text of a `--from_pretrained` value and its directory when it names one already on disk.

    Raises for a path that does not exist and for text that is no name or repo id.
    """
    text = os.fspath(name_or_path)
    local = Path(text).expanduser()
    if local.is_dir():
        return text, local
    if text == EMBEDDED_NAME:
        return text, embedded_checkpoint()
    if _looks_like_path(text):
        raise CheckpointError(f"{local}: no such checkpoint directory")
    if _REPO_ID.fullmatch(text) or _NAME.fullmatch(text):
        return text, None
    raise CheckpointError(f"{text!r} is not a directory, a checkpoint name or a Hugging Face repo id")


def _looks_like_path(text: str) -> bool:
    windows_separator = os.sep != "/" and os.sep in text
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or text.endswith("/") or windows_separator


def _catalog_entry(name: str, own: Path) -> CatalogEntry:
    """The catalog entry of `name` (or of its alias), or an error naming the known ones."""
    entry = find_entry(name)
    if entry is None:
        known = ", ".join(sorted({e.name for e in CATALOG} | set(ALIASES)))
        raise CheckpointError(
            f"{name!r}: no directory {own} and no catalog entry of that name; known: {known}"
        )
    return entry


def fetch_named(name: str, config: DownloadConfig) -> Path:
    """`$SAT_HOME/<name>` if it exists, else the catalog entry of that name, downloaded if needed."""
    own = config.sat_home / name
    if own.is_dir():
        return own
    entry = _catalog_entry(name, own)
    if entry.name != name:
        notify(config, f"{name}: resolved to the current version, {entry.name}")
    if entry.format == "hf":
        own = config.sat_home / entry.name
        return own if own.is_dir() else fetch_hf_repo(entry.repo_id, config, revision=entry.revision)
    return fetch_sat_archive(entry, config)


@contextlib.contextmanager
def download_lock(config: DownloadConfig, name: str) -> Iterator[None]:
    """Hold `$SAT_HOME/.locks/<name>.lock`, saying so once if another process has it."""
    path = config.sat_home / LOCK_DIR / f"{name}.lock"
    lock = FileLock(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            notify(config, f"{name}: another process is downloading it; waiting for {path}")
            lock.acquire()
    except OSError as error:
        raise DownloadError(f"{path}: cannot take the download lock ({error})") from None
    try:
        yield
    finally:
        lock.release()


def staging_folders(sat_home: Path, name: str = "*") -> list[Path]:
    """Staging folders of extractions into SAT_HOME (of `name`, or of any name) that were not renamed."""
    pattern = f".{name if name == '*' else glob.escape(name)}{STAGING_INFIX}*"
    return sorted(sat_home.glob(pattern))


def remove_stale_staging(config: DownloadConfig, name: str) -> None:
    """Delete the staging folders an interrupted extraction of `name` left; only the lock holder may."""
    for path in staging_folders(config.sat_home, name):
        notify(config, f"{name}: removing {path}, left by an interrupted extraction")
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)


def _refuse_non_directory(target: Path) -> None:
    if target.is_symlink() and not target.exists():
        raise CheckpointError(f"{target}: a symbolic link to {os.readlink(target)}, which does not exist")
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists but is not a checkpoint folder; move it away to download it")


def check_sat_directory(directory: Path) -> None:
    """Fail unless `directory` is a readable SAT layout (config JSON, `latest`, every shard's index).

    The config's meaning is left to the loader, so a checkpoint this version cannot build is still kept.
    """
    from cogvlm.checkpoints import sat_format  # torch: imported when a download is checked, not by `list`

    checkpoint = sat_format.open_sat_checkpoint(directory)
    for path in checkpoint.weight_files:
        # Memory-mapped, reading the pickled index only: extraction has just checked every CRC.
        sat_format.load_sat_weights(path, verify=False)


def fetch_sat_archive(entry: CatalogEntry, config: DownloadConfig) -> Path:
    """`$SAT_HOME/<name>`, downloading and extracting `<name>.zip` first if the folder is missing."""
    target = config.sat_home / entry.name
    if target.is_dir():
        return target
    _refuse_non_directory(target)
    kept_archive = config.sat_home / entry.filename
    downloaded = config.sat_home / DOWNLOAD_DIR / entry.filename
    if config.is_offline and not kept_archive.is_file() and not _is_usable_download(downloaded, config):
        raise DownloadError(
            f"{entry.name}: not in {config.sat_home} and offline mode is on "
            "(COGVLM_OFFLINE or HF_HUB_OFFLINE); "
            f"run `cogvlm download {entry.name}` with network access, or unset offline mode"
        )
    with download_lock(config, entry.name):
        if target.is_dir():  # another process finished it while this one waited
            return target
        remove_stale_staging(config, entry.name)
        if kept_archive.is_file():
            extract_checkpoint_archive(
                kept_archive, target, entry.name, check=check_sat_directory, progress=config.show_progress
            )
            return target
        try:
            if config.is_offline:  # verified by the run that downloaded it, which stopped before extracting
                _extract_download(downloaded, entry, config, target)
            else:
                _download_and_extract(entry, config, target)
        finally:
            with contextlib.suppress(OSError):  # kept only while it holds a download to resume or extract
                (config.sat_home / DOWNLOAD_DIR).rmdir()
    return target


def _is_usable_download(archive: Path, config: DownloadConfig) -> bool:
    """Whether an earlier run verified `archive` (without a SHA-256 only counts with allow_unverified)."""
    record = verified_record(archive)
    return record is not None and (record.get("sha256") is not None or config.allow_unverified)


def _download_and_extract(entry: CatalogEntry, config: DownloadConfig, target: Path) -> None:
    archive = fetch_file(
        archive_url(entry, config.endpoint),
        config.sat_home / DOWNLOAD_DIR / entry.filename,
        config,
        sha256=entry.sha256,
        size_bytes=entry.size_bytes,
    )
    _extract_download(archive, entry, config, target)


def _extract_download(archive: Path, entry: CatalogEntry, config: DownloadConfig, target: Path) -> None:
    """Extract a verified download; keep it unless it is extracted or its content is bad.

    An interrupted run (Ctrl-C, kill) or a full disk keeps the archive, so the next run extracts it
    without downloading it again; an archive whose members are refused would be refused again, so it goes.
    """
    try:
        extract_checkpoint_archive(
            archive, target, entry.name, check=check_sat_directory, progress=config.show_progress
        )
    except ArchiveWriteError as error:
        raise ArchiveWriteError(
            f"{error}; the verified archive is kept for the next run: {archive}"
        ) from None
    except CheckpointError:
        archive.unlink(missing_ok=True)
        record_path(archive).unlink(missing_ok=True)
        raise
    if config.keep_archive:
        os.replace(archive, config.sat_home / entry.filename)
    else:
        archive.unlink(missing_ok=True)
    record_path(archive).unlink(missing_ok=True)


def _hub(what: str):
    try:
        import huggingface_hub
    except ImportError:
        raise DownloadError(f"{what} needs huggingface_hub: pip install 'cogvlm[hub]'") from None
    return huggingface_hub


def fetch_hf_repo(repo_id: str, config: DownloadConfig, revision: str | None = None) -> Path:
    """The HF cache's snapshot of `repo_id` (config and safetensors only), downloaded if missing."""
    hub = _hub(f"{repo_id} (a Hugging Face repository)")
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = hub.snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(HF_PATTERNS),
            endpoint=config.endpoint,
            cache_dir=config.hf_cache_dir,
            local_files_only=config.is_offline,
        )
    except RepositoryNotFoundError:
        raise DownloadError(
            f"{repo_id}: no such repository at {config.endpoint}, and no local directory"
        ) from None
    except LocalEntryNotFoundError as error:
        mode = "offline mode is on" if config.is_offline else f"{config.endpoint} cannot be reached"
        raise DownloadError(f"{repo_id}: not in the Hugging Face cache and {mode} ({error})") from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise DownloadError(f"{repo_id}: download from {config.endpoint} failed ({error})") from None
    return Path(path)


def cached_hf_repo(entry: CatalogEntry, config: DownloadConfig) -> Path | None:
    """Where the HF cache holds an HF entry's snapshot, or None (also when huggingface_hub is absent)."""
    return _cached_snapshot(entry.repo_id, entry.revision, config)


def _cached_snapshot(repo_id: str, revision: str | None, config: DownloadConfig) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=config.hf_cache_dir, revision=revision)
    return Path(found).parent if isinstance(found, str) else None
