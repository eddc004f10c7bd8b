"""Fetch one file over HTTP: resume into a `.part` file, verify size and SHA-256, then rename into place.

Written on the standard library because the SAT archives are single files of ~35 GB on a Hub-compatible
server and the behaviour wanted here (keep and resume a partial file across processes, verify against the
Hub's `X-Linked-Etag`/`X-Linked-Size` or a catalog checksum, plain servers and mirrors alike) is a
small amount of code; whole HF repositories go through huggingface_hub instead (see `resolve.py`).

What a server may not do: send more bytes than the expected size (the `.part` never grows past it), send
sizes or ranges that contradict each other, redirect anywhere but http(s) (an https -> http downgrade is
refused; http -> https is followed) or more than `http_client.MAX_REDIRECTS` times, or send a file
without a SHA-256 unless `allow_unverified` says so. A verified file is recorded beside itself
(`<file>.json`) so that a later run reuses it instead of downloading it again. HTTP itself is `http_client`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from cogvlm.checkpoints.http_client import (
    NETWORK_ERRORS,
    RemoteFile,
    TransientError,
    byte_count,
    open_url,
    probe_remote,
    raise_http,
)
from cogvlm.errors import ConfigError, DownloadError
from cogvlm.utils.progress import byte_bar

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_SAT_HOME = "~/.sat_models"
CHUNK_BYTES = 1 << 20
_TRUTHY = ("1", "true", "yes", "on")
_BAR_WIDTH = 24
ALLOW_UNVERIFIED_ENV = "COGVLM_ALLOW_UNVERIFIED"
_HOW_TO_ALLOW = f"pass --allow_unverified to `cogvlm download` or set {ALLOW_UNVERIFIED_ENV}=1"


@dataclass(frozen=True)
class DownloadConfig:
    """Where checkpoints live and how they are fetched."""

    sat_home: Path
    endpoint: str = DEFAULT_ENDPOINT
    is_offline: bool = False
    keep_archive: bool = False
    show_progress: bool = True
    max_retries: int = 5
    retry_wait_s: float = 1.0
    timeout_s: float = 60.0
    hf_cache_dir: Path | None = None  # None: huggingface_hub's own default (honours HF_HOME, HF_HUB_CACHE)
    allow_unverified: bool = False  # accept a file nobody gives a SHA-256 for (with a warning on stderr)

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"DownloadConfig: endpoint={self.endpoint!r} must be an http:// or https:// URL"
            )
        if self.max_retries < 0 or self.timeout_s <= 0 or self.retry_wait_s < 0:
            raise ConfigError(
                f"DownloadConfig: max_retries={self.max_retries} must be >= 0, "
                f"timeout_s={self.timeout_s} > 0, retry_wait_s={self.retry_wait_s} >= 0"
            )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides) -> DownloadConfig:
        """SAT_HOME, COGVLM_ENDPOINT or HF_ENDPOINT, COGVLM_OFFLINE or HF_HUB_OFFLINE,
        COGVLM_ALLOW_UNVERIFIED, then overrides (None: not given)."""
        environ = os.environ if environ is None else environ
        config = cls(
            sat_home=Path(environ.get("SAT_HOME") or DEFAULT_SAT_HOME).expanduser(),
            endpoint=(
                environ.get("COGVLM_ENDPOINT") or environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
            ).rstrip("/"),
            is_offline=any(
                environ.get(name, "").lower() in _TRUTHY for name in ("COGVLM_OFFLINE", "HF_HUB_OFFLINE")
            ),
            allow_unverified=environ.get(ALLOW_UNVERIFIED_ENV, "").lower() in _TRUTHY,
        )
        chosen = {key: value for key, value in overrides.items() if value is not None}
        if "sat_home" in chosen:
            chosen["sat_home"] = Path(chosen["sat_home"]).expanduser()
        if "endpoint" in chosen:
            chosen["endpoint"] = str(chosen["endpoint"]).rstrip("/")
        return replace(config, **chosen)


def notify(config: DownloadConfig, message: str) -> None:
    """A one-line status message on stderr (silenced with show_progress=False)."""
    if config.show_progress:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr that show_progress=False does not silence."""
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


class Progress:
    """A progress bar on stderr: bar, percentage, bytes and rate; redrawn in place on a terminal.

    On a terminal it is redrawn at most every 0.5 s; in a log (not a terminal) one line is written at most
    every 10 s, so a 35 GB download does not flood it.
    """

    def __init__(self, label: str, total: int | None, done: int, enabled: bool):
        self.label, self.total, self.done, self.enabled = label, total, done, enabled
        self.is_tty = sys.stderr.isatty()
        self.interval_s = 0.5 if self.is_tty else 10.0
        self.started, self.start_done, self.shown_at = time.monotonic(), done, 0.0

    def update(self, count: int) -> None:
        """Add `count` bytes and redraw if enough time has passed."""
        self.done += count
        if time.monotonic() - self.shown_at >= self.interval_s:
            self._draw(final=False)

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._draw(final=True)

    def _draw(self, final: bool) -> None:
        if not self.enabled:
            return
        self.shown_at = time.monotonic()
        rate = (self.done - self.start_done) / max(self.shown_at - self.started, 1e-6)
        if self.total:
            filled = min(_BAR_WIDTH, _BAR_WIDTH * self.done // self.total)
            bar = "#" * filled + "." * (_BAR_WIDTH - filled)
            percent = 100.0 * self.done / self.total
            amount = f"[{bar}] {percent:5.1f}% {human_bytes(self.done)}/{human_bytes(self.total)}"
        else:
            amount = human_bytes(self.done)
        line = f"{self.label}: {amount} {human_bytes(rate)}/s"
        end = "\n" if final or not self.is_tty else ""
        print(("\r" if self.is_tty else "") + line, end=end, file=sys.stderr, flush=True)


def human_bytes(count: float) -> str:
    """A byte count in B, KB, MB, GB or TB (powers of 1000), one decimal."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def record_path(destination: Path) -> Path:
    """Where `fetch_file` records what `destination` was verified against: `<destination>.json`."""
    return destination.with_name(destination.name + ".json")


def verified_record(destination: Path) -> dict | None:
    """What `destination` was verified against when `fetch_file` wrote it; None if it is no such file."""
    try:
        recorded = json.loads(record_path(destination).read_text())
        size = destination.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or destination.is_symlink() or recorded.get("size_bytes") != size:
        return None
    return recorded


def same_file(recorded: dict | None, expected: dict) -> bool:
    """Whether a record is of the expected file: same size and SHA-256 (any server), else the same URL too."""
    if not isinstance(recorded, dict):
        return False
    keys = ("size_bytes", "sha256") if expected["sha256"] is not None else ("size_bytes", "sha256", "url")
    return all(recorded.get(key) == expected[key] for key in keys)


class _RefusedBody(DownloadError):
    """The server sent something that makes the partial file worthless: it is discarded."""


@dataclass
class _PartialFile:
    """A `.part` file being written, the SHA-256 of its bytes so far, and what it is expected to become."""

    path: Path
    url: str
    size_bytes: int | None = None
    sha256: str | None = None
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    hashed: int = 0  # bytes of the file that `hasher` has seen

    @property
    def meta_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    @property
    def expected(self) -> dict:
        """What the file must become, as recorded beside it."""
        return {"url": self.url, "size_bytes": self.size_bytes, "sha256": self.sha256}

    def open(self, show_progress: bool = True) -> int:
        """Keep a partial file that belongs to the same remote file, else start afresh; return its length."""
        for path in (self.path, self.meta_path):
            if path.is_symlink():
                raise DownloadError(f"{path}: a symbolic link; refusing to write a download through it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            recorded = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            recorded = None
        length = self.path.stat().st_size if self.path.is_file() else 0
        if not same_file(recorded, self.expected) or length > self.size_bytes:
            self.reset()
            self.meta_path.write_text(json.dumps(self.expected))
            return 0
        if self.hashed != length:
            self.hasher, self.hashed = hashlib.sha256(), 0
            bar = byte_bar(f"checksumming {self.path.name}", length, show_progress)
            with bar, open(self.path, "rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    self.hasher.update(chunk)
                    self.hashed += len(chunk)
                    bar.update(len(chunk))
        return length

    def reset(self) -> None:
        """Forget the bytes written so far."""
        self.path.write_bytes(b"")
        self.hasher, self.hashed = hashlib.sha256(), 0

    def append(self, chunk: bytes, handle) -> None:
        """Write and hash one chunk."""
        handle.write(chunk)
        self.hasher.update(chunk)
        self.hashed += len(chunk)

    def discard(self, only_if_empty: bool = False) -> None:
        """Delete the partial file and its record (with `only_if_empty`: only if it holds no bytes)."""
        with contextlib.suppress(OSError):
            if only_if_empty and self.path.stat().st_size > 0:
                return
        for path in (self.path, self.meta_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _expected(url: str, remote: RemoteFile, sha256: str | None, size_bytes: int | None) -> tuple:
    """The size and SHA-256 the file must have: the caller's (a catalog's), checked against the server's."""
    if sha256 is not None and remote.sha256 is not None and sha256.lower() != remote.sha256:
        raise DownloadError(f"{url}: the server's SHA-256 {remote.sha256} differs from the expected {sha256}")
    if size_bytes is not None and remote.size_bytes is not None and size_bytes != remote.size_bytes:
        raise DownloadError(
            f"{url}: the server's size {remote.size_bytes} differs from the expected {size_bytes}"
        )
    size = size_bytes if size_bytes is not None else remote.size_bytes
    if size is None:
        raise DownloadError(
            f"{url}: the server sends no size (X-Linked-Size or Content-Length) and none is recorded for it, "
            "so the download cannot be bounded; refused"
        )
    return size, (sha256.lower() if sha256 is not None else remote.sha256)


def _check_verifiable(url: str, sha256: str | None, config: DownloadConfig) -> None:
    if sha256 is not None:
        return
    if not config.allow_unverified:
        raise DownloadError(
            f"{url}: the server sends no SHA-256 (X-Linked-Etag) and none is recorded for it, so the "
            f"download cannot be verified; refused. To accept it unverified, {_HOW_TO_ALLOW}"
        )
    warn(f"{url}: no SHA-256 is known for this file; downloading it UNVERIFIED (allow_unverified is set)")


def _check_free_space(directory: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DownloadError(
            f"{directory}: {what} needs {human_bytes(needed)} but only {human_bytes(free)} is free"
        )


def _transfer(remote: RemoteFile, part: _PartialFile, progress: Progress, config: DownloadConfig) -> None:
    """One GET from the current length of the partial file; a body cut short is a `TransientError`.

    A server that answers a range with 416 has nothing after it: the file ends there, and verification
    decides whether that is the whole file.
    """
    offset = part.open()
    if offset == part.size_bytes:
        return
    _check_free_space(part.path.parent, part.size_bytes - offset, f"downloading {remote.url}")
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response, location, _ = open_url(remote.location, config.timeout_s, headers=headers)
        with response:
            start = _body_start(response, offset, part.size_bytes, location)
            if start != offset:  # the server ignored the range: take the whole body from the start
                part.reset()
                progress.done -= offset
            _write_body(response, part, progress, location)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            return
        raise_http(error.filename or remote.location, error.code, error.reason)
    except NETWORK_ERRORS as error:
        raise TransientError(f"{remote.location}: {error}") from error
    except OSError as error:
        raise DownloadError(f"{part.path}: cannot write the download ({error})") from error
    if part.hashed < part.size_bytes:
        raise TransientError(
            f"{remote.location}: connection closed after {part.hashed} of {part.size_bytes} bytes"
        )


def _body_start(response, offset: int, size: int, url: str) -> int:
    """Where the body starts in the file, once its status, encoding, range and length agree with `size`."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise DownloadError(
            f"{url}: the server sent Content-Encoding {encoding!r} although identity was asked for; refused"
        )
    if response.status == 200:
        start = 0
    elif response.status == 206:
        start = _range_start(response.headers.get("Content-Range"), offset, size, url)
    else:
        raise DownloadError(f"{url}: HTTP {response.status} {response.reason} instead of the file's bytes")
    length = byte_count(response.headers.get("Content-Length"), "Content-Length", url)
    if length is not None and length != size - start:
        raise DownloadError(
            f"{url}: the server announces {length} bytes (Content-Length) from byte {start} "
            f"of a {size}-byte file; refused"
        )
    return start


def _range_start(value: str | None, offset: int, size: int, url: str) -> int:
    wanted = f"bytes {offset}-{size - 1}/{size}"
    match = re.fullmatch(r"bytes ([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,20}|\*)", (value or "").strip())
    if match is None:
        raise DownloadError(f"{url}: a partial reply with Content-Range {value!r}, expected {wanted!r}")
    start, end, total = int(match[1]), int(match[2]), match[3]
    if (start, end) != (offset, size - 1) or (total != "*" and int(total) != size):
        raise DownloadError(
            f"{url}: asked for bytes {offset}- of a {size}-byte file, the server sent Content-Range "
            f"{value!r} (expected {wanted!r}); refused"
        )
    return start


def _write_body(response, part: _PartialFile, progress: Progress, url: str) -> None:
    """Append the body to the partial file, never past the expected size; a longer body is refused."""
    with open(part.path, "r+b") as handle:
        handle.seek(part.hashed)
        handle.truncate()
        # One byte more than the room left is enough to tell that the body is too long.
        while chunk := response.read(min(CHUNK_BYTES, part.size_bytes - part.hashed + 1)):
            if len(chunk) > part.size_bytes - part.hashed:
                raise _RefusedBody(
                    f"{url}: the server sends more than the expected {part.size_bytes} bytes; "
                    "download refused and discarded"
                )
            part.append(chunk, handle)
            progress.update(len(chunk))


def fetch_file(
    url: str,
    destination: Path,
    config: DownloadConfig,
    *,
    sha256: str | None = None,
    size_bytes: int | None = None,
) -> Path:
    """Download `url` to `destination`, resuming `<destination>.part`, and verify it before the rename.

    The expected SHA-256 and size come from the arguments (a catalog) or else from the server's headers;
    without a size the download is refused, without a SHA-256 it is refused unless `allow_unverified`.
    A `destination` this function verified earlier against the same values is reused as it is.
    A verification failure or a body longer than the size deletes the partial file; a transfer that keeps
    failing, or a reply that contradicts the expected size or range, leaves it for the next try.
    """
    if config.is_offline:
        raise DownloadError(f"{url}: offline mode is on (COGVLM_OFFLINE / HF_HUB_OFFLINE); cannot download")
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"{url}: only http:// and https:// URLs are downloaded")
    part = _PartialFile(destination.with_name(destination.name + ".part"), url)
    try:
        if not _receive(url, destination, part, config, sha256, size_bytes):
            notify(config, f"{destination.name}: already downloaded and verified; reusing {destination}")
            return destination
        _verify(part, url)
    except _RefusedBody:
        part.discard()
        raise
    except DownloadError:
        part.discard(only_if_empty=True)
        raise
    _finish(part, destination)
    return destination


def _receive(url, destination: Path, part: _PartialFile, config: DownloadConfig, sha256, size_bytes) -> bool:
    """Fill `part` with retries; False (nothing fetched) when `destination` already is the verified file."""
    progress = None
    for attempt in range(config.max_retries + 1):
        try:
            remote = probe_remote(url, config.timeout_s)
            part.size_bytes, part.sha256 = _expected(url, remote, sha256, size_bytes)
            if progress is None:
                _check_verifiable(url, part.sha256, config)
                if same_file(verified_record(destination), part.expected):
                    return False
                progress = Progress(
                    destination.name, part.size_bytes, part.open(config.show_progress), config.show_progress
                )
            _transfer(remote, part, progress, config)
            break
        except TransientError as error:
            if attempt == config.max_retries:
                raise DownloadError(
                    f"{error}; gave up after {attempt + 1} attempts, {part.path} kept: run again to resume"
                ) from None
            notify(config, f"{destination.name}: {error}; resuming (attempt {attempt + 2})")
            time.sleep(config.retry_wait_s * (attempt + 1))
    progress.close()
    return True


def _verify(part: _PartialFile, url: str) -> None:
    received = part.path.stat().st_size
    if received != part.size_bytes:
        part.discard()
        raise DownloadError(
            f"{url}: received {received} bytes, expected {part.size_bytes}; download discarded"
        )
    if part.sha256 is not None:
        actual = part.hasher.hexdigest()
        if actual != part.sha256:
            part.discard()
            raise DownloadError(f"{url}: SHA-256 {actual} does not match {part.sha256}; download discarded")


def _finish(part: _PartialFile, destination: Path) -> None:
    """Make the verified bytes durable, record what they were verified against, then rename them into place.

    The record is written first: a crash before the rename leaves a complete `.part` that the next run
    verifies again without downloading, never a `destination` without its record.
    """
    with open(part.path, "r+b") as handle:
        os.fsync(handle.fileno())
    record = record_path(destination)
    temporary = record.with_name(record.name + ".tmp")
    temporary.write_text(json.dumps(part.expected))
    os.replace(temporary, record)
    os.replace(part.path, destination)
    part.meta_path.unlink(missing_ok=True)
