"""HTTP for downloads: http(s) only, redirects followed by hand and checked hop by hop, Hub headers read.

`open_url` is the one way out to the network: an opener without file:, ftp: or data: handlers, at most
`MAX_REDIRECTS` redirects, never from https down to http, identity encoding (sizes and checksums describe
the stored bytes). Failures worth retrying are `TransientError`; everything else is a `DownloadError`.
"""

from __future__ import annotations

import http.client
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from cogvlm.errors import DownloadError

USER_AGENT = "cogvlm-downloader/0.1"
_REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10
_RETRYABLE_STATUS = (408, 425, 429, 500, 502, 503, 504)
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
_BYTE_COUNT = re.compile(r"[0-9]{1,20}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RemoteFile:
    """What the server says about a file: where its bytes are, and its size and SHA-256 if it says."""

    url: str
    location: str
    size_bytes: int | None
    sha256: str | None


class TransientError(Exception):
    """A failure worth retrying: a cut connection, a timeout, a 5xx."""


class _ManualRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # `_open` follows redirects by hand: it checks each hop and reads the Hub's headers


def _http_only_opener() -> urllib.request.OpenerDirector:
    """An opener with http(s) handlers only: no file:, ftp: or data: URL can be opened through it."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _ManualRedirects(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


_OPENER = _http_only_opener()


def _request(
    url: str, method: str = "GET", headers: Mapping[str, str] | None = None
) -> urllib.request.Request:
    # identity: the sizes and checksums describe the stored bytes, not a compressed transfer.
    base = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    return urllib.request.Request(url, method=method, headers={**base, **(headers or {})})


def byte_count(value: str | None, header: str, url: str) -> int | None:
    """A size header as an int, None when absent; anything but a plain non-negative integer is an error."""
    if value is None:
        return None
    if not _BYTE_COUNT.fullmatch(value.strip()):
        raise DownloadError(f"{url}: header {header}: {value!r} is not a byte count")
    return int(value)


def _sha256_header(value: str | None, url: str) -> str | None:
    """The SHA-256 an `X-Linked-Etag` carries, None when absent; any other value is an error."""
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"').lower()
    if not SHA256_PATTERN.fullmatch(text):
        raise DownloadError(f"{url}: header X-Linked-Etag: {value!r} is not a SHA-256 (64 hex digits)")
    return text


def raise_http(url: str, status: int, reason: str) -> None:
    if status in _RETRYABLE_STATUS:
        raise TransientError(f"{url}: HTTP {status} {reason}")
    raise DownloadError(f"{url}: HTTP {status} {reason}" + (" (no such file)" if status == 404 else ""))


def _redirect_target(current: str, location: str | None) -> str:
    """Where a redirect from `current` leads, if allowed: http(s) only, never from https down to http."""
    if not location:
        raise DownloadError(f"{current}: a redirect without a Location header")
    try:
        target = urljoin(current, location.strip())
        scheme, host = urlsplit(target).scheme.lower(), urlsplit(target).hostname
    except ValueError:
        scheme, host, target = "", None, location
    if scheme not in ("http", "https") or not host:
        raise DownloadError(
            f"{current}: refusing the redirect to {target!r}: only http:// and https:// URLs are followed"
        )
    if scheme == "http" and urlsplit(current).scheme.lower() == "https":
        raise DownloadError(f"{current}: refusing the redirect to {target!r}: a downgrade from https to http")
    return target


def open_url(url: str, timeout_s: float, method: str = "GET", headers: Mapping[str, str] | None = None):
    """Open `url`, following at most `MAX_REDIRECTS` checked redirects by hand.

    Returns the final response (body unread), its URL, and the headers of every hop, first to last.
    Raises `urllib.error.HTTPError` for a final error status and `TransientError` for a network failure.
    """
    current, hops = url, []
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = _OPENER.open(_request(current, method, headers), timeout=timeout_s)
        except urllib.error.HTTPError as error:
            if error.code not in _REDIRECTS:
                raise
            error.close()
            hops.append(error.headers)
            current = _redirect_target(current, error.headers.get("Location"))
            continue
        except NETWORK_ERRORS as error:
            if isinstance(getattr(error, "reason", None), ssl.SSLCertVerificationError):
                raise DownloadError(f"{current}: {error.reason}") from None  # trying again will not fix it
            raise TransientError(f"{current}: {error}") from error
        hops.append(response.headers)
        return response, current, hops
    raise DownloadError(f"{url}: more than {MAX_REDIRECTS} redirects")


def probe_remote(url: str, timeout_s: float) -> RemoteFile:
    """HEAD `url` through its redirects, keeping the Hub's `X-Linked-Size`/`X-Linked-Etag` of any hop."""
    try:
        response, location, hops = open_url(url, timeout_s, "HEAD")
    except urllib.error.HTTPError as error:
        raise_http(error.filename or url, error.code, error.reason)
    response.close()
    sizes = {byte_count(headers.get("X-Linked-Size"), "X-Linked-Size", url) for headers in hops} - {None}
    digests = {_sha256_header(headers.get("X-Linked-Etag"), url) for headers in hops} - {None}
    if len(sizes) > 1 or len(digests) > 1:
        raise DownloadError(
            f"{url}: the redirects disagree about the file: sizes {sorted(sizes)}, SHA-256 {sorted(digests)}"
        )
    size = next(iter(sizes), None)
    if size is None:
        size = byte_count(hops[-1].get("Content-Length"), "Content-Length", location)
    return RemoteFile(url, location, size, next(iter(digests), None))
