"""Fetch one file over HTTP: resume into a `.part` file, verify size and SHA-256, then rename into place.

Written on the standard library because the SAT archives are single files of ~35 GB on a Hub-compatible
server and the behaviour wanted here (keep and resume a partial file across processes, verify against the
Hub's `X-Linked-Etag`/`X-Linked-Size` or a catalog checksum, plain servers and mirrors alike) is a
small amount of code; whole HF repositories go through huggingface_hub instead (see `resolve.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urljoin

from cogvlm.errors import ConfigError, DownloadError

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_SAT_HOME = "~/.sat_models"
USER_AGENT = "cogvlm-downloader/0.1"
CHUNK_BYTES = 1 << 20
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 10
_RETRYABLE_STATUS = (408, 425, 429, 500, 502, 503, 504)
_TRUTHY = ("1", "true", "yes", "on")
_BAR_WIDTH = 24
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


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

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"DownloadConfig: endpoint={self.endpoint!r} must be an http:// or https:// URL"
            )
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise ConfigError(
                f"DownloadConfig: max_retries={self.max_retries} must be >= 0, timeout_s={self.timeout_s} > 0"
            )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides) -> DownloadConfig:
        """SAT_HOME, COGVLM_ENDPOINT or HF_ENDPOINT, COGVLM_OFFLINE or HF_HUB_OFFLINE, then overrides."""
        environ = os.environ if environ is None else environ
        config = cls(
            sat_home=Path(environ.get("SAT_HOME") or DEFAULT_SAT_HOME).expanduser(),
            endpoint=(
                environ.get("COGVLM_ENDPOINT") or environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
            ).rstrip("/"),
            is_offline=any(
                environ.get(name, "").lower() in _TRUTHY for name in ("COGVLM_OFFLINE", "HF_HUB_OFFLINE")
            ),
        )
        chosen = {key: value for key, value in overrides.items() if value is not None}
        if "sat_home" in chosen:
            chosen["sat_home"] = Path(chosen["sat_home"]).expanduser()
        if "endpoint" in chosen:
            chosen["endpoint"] = str(chosen["endpoint"]).rstrip("/")
        return replace(config, **chosen)


@dataclass(frozen=True)
class RemoteFile:
    """What the server says about a file: where its bytes are, and its size and SHA-256 if it says."""

    url: str
    location: str
    size_bytes: int | None
    sha256: str | None


class _TransientError(Exception):
    """A failure worth retrying: a cut connection, a timeout, a 5xx."""


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the HEAD probe follows redirects by hand, to read the Hub's headers on each hop


_PROBE_OPENER = urllib.request.build_opener(_KeepRedirects)
_OPENER = urllib.request.build_opener()


def notify(config: DownloadConfig, message: str) -> None:
    """A one-line status message on stderr (silenced with show_progress=False)."""
    if config.show_progress:
        print(message, file=sys.stderr, flush=True)


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


def _request(
    url: str, method: str = "GET", headers: Mapping[str, str] | None = None
) -> urllib.request.Request:
    # identity: the sizes and checksums describe the stored bytes, not a compressed transfer.
    base = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    return urllib.request.Request(url, method=method, headers={**base, **(headers or {})})


def _sha256_from_etag(value: str | None) -> str | None:
    text = (value or "").strip().removeprefix("W/").strip('"').lower()
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


def _raise_http(url: str, status: int, reason: str) -> None:
    if status in _RETRYABLE_STATUS:
        raise _TransientError(f"{url}: HTTP {status} {reason}")
    raise DownloadError(f"{url}: HTTP {status} {reason}" + (" (no such file)" if status == 404 else ""))


def probe_remote(url: str, config: DownloadConfig) -> RemoteFile:
    """HEAD `url`, following redirects by hand and keeping the Hub's `X-Linked-Size`/`X-Linked-Etag`."""
    current, size, sha256 = url, None, None
    for _ in range(_MAX_REDIRECTS):
        try:
            with _PROBE_OPENER.open(_request(current, "HEAD"), timeout=config.timeout_s) as response:
                status, headers = response.status, response.headers
        except urllib.error.HTTPError as error:
            status, headers = error.code, error.headers
            if status not in _REDIRECTS:
                _raise_http(current, status, error.reason)
        except _NETWORK_ERRORS as error:
            raise _TransientError(f"{current}: {error}") from error
        size = size or _int_or_none(headers.get("X-Linked-Size"))
        sha256 = sha256 or _sha256_from_etag(headers.get("X-Linked-Etag"))
        if status not in _REDIRECTS:
            size = size or _int_or_none(headers.get("Content-Length"))
            return RemoteFile(url, current, size, sha256)
        current = urljoin(current, headers["Location"])
    raise DownloadError(f"{url}: more than {_MAX_REDIRECTS} redirects")


@dataclass
class _PartialFile:
    """A `.part` file being written, the SHA-256 of its bytes so far, and what it is expected to become."""

    path: Path
    size_bytes: int | None
    sha256: str | None
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    hashed: int = 0  # bytes of the file that `hasher` has seen

    @property
    def meta_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def open(self) -> int:
        """Keep a partial file that belongs to the same remote file, else start afresh; return its length."""
        expected = {"size_bytes": self.size_bytes, "sha256": self.sha256}
        try:
            recorded = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            recorded = None
        length = self.path.stat().st_size if self.path.is_file() else 0
        too_long = self.size_bytes is not None and length > self.size_bytes
        if recorded != expected or too_long:
            self.reset()
            self.meta_path.write_text(json.dumps(expected))
            return 0
        if self.hashed != length:
            self.hasher, self.hashed = hashlib.sha256(), 0
            with open(self.path, "rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    self.hasher.update(chunk)
                    self.hashed += len(chunk)
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

    def discard(self) -> None:
        """Delete the partial file and its record."""
        for path in (self.path, self.meta_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _expected(url: str, remote: RemoteFile, sha256: str | None, size_bytes: int | None) -> tuple:
    if sha256 and remote.sha256 and sha256.lower() != remote.sha256:
        raise DownloadError(f"{url}: the server's SHA-256 {remote.sha256} differs from the expected {sha256}")
    if size_bytes and remote.size_bytes and size_bytes != remote.size_bytes:
        raise DownloadError(
            f"{url}: the server's size {remote.size_bytes} differs from the expected {size_bytes}"
        )
    return (sha256 or remote.sha256), (size_bytes or remote.size_bytes)


def _check_free_space(directory: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DownloadError(
            f"{directory}: {what} needs {human_bytes(needed)} but only {human_bytes(free)} is free"
        )


def _transfer(remote: RemoteFile, part: _PartialFile, progress: Progress, config: DownloadConfig) -> None:
    """One GET from the current length of the partial file; a body cut short is a `_TransientError`.

    A body that arrives whole ends the transfer even if the file is shorter than expected: that is a
    truncated file, not a cut connection, and verification rejects it.
    """
    offset = part.open()
    if part.size_bytes is not None and offset == part.size_bytes:
        return
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with _OPENER.open(_request(remote.location, headers=headers), timeout=config.timeout_s) as response:
            start = _range_start(response, offset, remote.location)
            if start != offset:  # the server ignored the range: take the whole body from the start
                part.reset()
                progress.done -= offset
            body_bytes = _int_or_none(response.headers.get("Content-Length"))
            if body_bytes is not None:
                _check_free_space(part.path.parent, body_bytes, f"downloading {remote.url}")
            _write_body(response, part, progress)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing after `offset`: the file is complete, verification decides
            return
        _raise_http(remote.location, error.code, error.reason)
    except _NETWORK_ERRORS as error:
        raise _TransientError(f"{remote.location}: {error}") from error
    except OSError as error:
        raise DownloadError(f"{part.path}: cannot write the download ({error})") from error
    if body_bytes is not None and part.hashed - start < body_bytes:
        raise _TransientError(
            f"{remote.location}: connection closed after {part.hashed} of {start + body_bytes} bytes"
        )


def _write_body(response, part: _PartialFile, progress: Progress) -> None:
    with open(part.path, "r+b") as handle:
        handle.seek(part.hashed)
        handle.truncate()
        while chunk := response.read(CHUNK_BYTES):
            part.append(chunk, handle)
            progress.update(len(chunk))


def _range_start(response, offset: int, url: str) -> int:
    if response.status != 206:
        return 0
    start = _content_range_start(response.headers.get("Content-Range"))
    if start != offset:
        raise DownloadError(
            f"{url}: asked for bytes {offset}- but the server sent a range starting at {start}"
        )
    return start


def _content_range_start(value: str | None) -> int:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return -1


def fetch_file(
    url: str,
    destination: Path,
    config: DownloadConfig,
    *,
    sha256: str | None = None,
    size_bytes: int | None = None,
) -> Path:
    """Download `url` to `destination`, resuming `<destination>.part`, and verify it before the rename.

    The expected SHA-256 and size come from the arguments (a catalog) or else from the server's headers.
    A verification failure deletes the partial file; a transfer that keeps failing leaves it for the next try.
    """
    if config.is_offline:
        raise DownloadError(f"{url}: offline mode is on (COGVLM_OFFLINE / HF_HUB_OFFLINE); cannot download")
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = _PartialFile(destination.with_name(destination.name + ".part"), None, None)
    progress = None
    for attempt in range(config.max_retries + 1):
        try:
            remote = probe_remote(url, config)
            part.sha256, part.size_bytes = _expected(url, remote, sha256, size_bytes)
            if progress is None:
                progress = Progress(destination.name, part.size_bytes, part.open(), config.show_progress)
            _transfer(remote, part, progress, config)
            break
        except _TransientError as error:
            if attempt == config.max_retries:
                raise DownloadError(
                    f"{error}; gave up after {attempt + 1} attempts, {part.path} kept: run again to resume"
                ) from None
            notify(config, f"{destination.name}: {error}; resuming (attempt {attempt + 2})")
            time.sleep(config.retry_wait_s * (attempt + 1))
    progress.close()
    _verify(part, url)
    os.replace(part.path, destination)
    part.meta_path.unlink(missing_ok=True)
    return destination


def _verify(part: _PartialFile, url: str) -> None:
    received = part.path.stat().st_size
    if part.size_bytes is not None and received != part.size_bytes:
        part.discard()
        raise DownloadError(
            f"{url}: received {received} bytes, expected {part.size_bytes}; download discarded"
        )
    if part.sha256 is not None:
        actual = part.hasher.hexdigest()
        if actual != part.sha256.lower():
            part.discard()
            raise DownloadError(f"{url}: SHA-256 {actual} does not match {part.sha256}; download discarded")
