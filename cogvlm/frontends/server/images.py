"""Turning an `image_url` of a chat message into an RGB image, under the server's image policy."""

from __future__ import annotations

import base64
import binascii
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

from cogvlm.errors import ImageError
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.errors import APIError, invalid
from cogvlm.image_processors import load_image


def _too_large(param: str, limit: int) -> APIError:
    return APIError(
        413, f"{param}: the image is larger than {limit} bytes", param=param, code="image_too_large"
    )


def _decode_data_url(url: str, param: str, config: ServerConfig) -> bytes:
    header, separator, payload = url.partition(",")
    if not separator:
        raise invalid(f"{param}: a data URL needs a ',' before its payload", param)
    media_type, *options = header[len("data:") :].split(";")  # the scheme is any case: "DATA:" too
    if "base64" not in (option.lower() for option in options):
        raise invalid(f"{param}: only base64 data URLs are accepted (data:image/<type>;base64,...)", param)
    if media_type and not media_type.lower().startswith("image/"):
        raise invalid(f"{param}: media type {media_type[:40]!r} is not an image type", param)
    if len(payload) * 3 // 4 > config.max_image_bytes + 3:
        raise _too_large(param, config.max_image_bytes)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{param}: the base64 payload is not valid base64", param, "invalid_base64") from None


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows at most `max_redirections` redirects, and only to http(s) URLs (urllib also allows ftp)."""

    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlparse(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a {scheme}: URL refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _read_within(response, limit: int, deadline: float) -> bytes:
    """Up to `limit` bytes of `response`; a TimeoutError once `deadline` passes (a slow drip included)."""
    data = bytearray()
    while len(data) < limit:
        if time.monotonic() > deadline:
            raise TimeoutError("the transfer took longer than the server's remote image timeout")
        piece = response.read1(min(1 << 16, limit - len(data)))
        if not piece:
            break
        data += piece
    return bytes(data)


def _fetch_remote(url: str, param: str, config: ServerConfig) -> bytes:
    timeout_s = config.remote_image_timeout_s
    opener = urllib.request.build_opener(_HttpRedirectsOnly)
    try:
        with opener.open(url, timeout=timeout_s) as response:
            data = _read_within(response, config.max_image_bytes + 1, time.monotonic() + timeout_s)
    except (OSError, ValueError, http.client.HTTPException) as error:  # ValueError: a malformed URL
        raise invalid(f"{param}: could not fetch the image ({error})", param, "image_fetch_failed") from None
    if len(data) > config.max_image_bytes:
        raise _too_large(param, config.max_image_bytes)
    return data


def _read_file(url: str, param: str, config: ServerConfig) -> bytes:
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not path.is_file():
        raise invalid(f"{param}: {path} is not a file", param, "image_not_found")
    try:
        if path.stat().st_size > config.max_image_bytes:
            raise _too_large(param, config.max_image_bytes)
        with path.open("rb") as file:  # read at most the limit: /proc files report a size of 0
            data = file.read(config.max_image_bytes + 1)
    except OSError as error:  # unreadable, or gone since the check
        message = f"{param}: could not read {path} ({error.strerror})"
        raise invalid(message, param, "image_not_found") from None
    if len(data) > config.max_image_bytes:
        raise _too_large(param, config.max_image_bytes)
    return data


def check_url_scheme(url: object, param: str, config: ServerConfig) -> str:
    """The URL's scheme if this server accepts it (a non-empty string; data, or http(s)/file when enabled)."""
    if not isinstance(url, str) or not url:
        raise invalid(f"{param}: expected a non-empty string", param)
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https") and not config.allow_remote_images:
        raise invalid(
            f"{param}: http(s) image URLs are disabled on this server (start it with --allow-remote-images); "
            "send the image as a base64 data URL",
            param,
            "remote_images_disabled",
        )
    if scheme == "file" and not config.allow_file_images:
        raise invalid(
            f"{param}: file:// image URLs are disabled on this server (start it with --allow-file-images)",
            param,
            "file_images_disabled",
        )
    if scheme not in ("data", "http", "https", "file"):
        raise invalid(f"{param}: unsupported URL scheme {scheme[:20]!r}; send a base64 data URL", param)
    return scheme


def image_from_url(url: object, param: str, config: ServerConfig) -> Image.Image:
    """Decode a data URL (always allowed) or fetch an http(s)/file URL (only when enabled)."""
    scheme = check_url_scheme(url, param, config)
    if scheme == "data":
        data = _decode_data_url(url, param, config)
    elif scheme == "file":
        data = _read_file(url, param, config)
    else:
        data = _fetch_remote(url, param, config)
    try:
        return load_image(data, max_pixels=config.max_image_pixels)
    except ImageError as error:
        raise invalid(f"{param}: {error}", param, "invalid_image") from None
