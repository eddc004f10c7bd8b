"""A real HTTP server on 127.0.0.1 that speaks the part of the Hugging Face Hub protocol downloads use.

`/<repo>/resolve/<revision>/<file>` answers like the Hub for an LFS file (X-Repo-Commit, X-Linked-Etag =
SHA-256, X-Linked-Size) and, by default, redirects to `/blobs/<sha256>`, which serves the bytes with Range
support. `/api/models/<repo>/revision/<rev>` and `/api/models/<repo>/tree/<rev>` list a repository for
huggingface_hub; a missing repository or file is a 404 with the Hub's `X-Error-Code`. Faults can be
injected: cut a transfer after N bytes, ignore Range, hold a body until a gate opens, advertise a wrong
checksum or size (or any header value), send no Content-Length, keep sending past the end, or redirect
anywhere. Every GET (also in arrival order), Range header and body byte sent is counted per path.
A `tls` context serves HTTPS instead of HTTP.
"""

from __future__ import annotations

import collections
import hashlib
import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ENDLESS_CAP = 256 << 20  # an endless body stops here, so a client that never hangs up cannot hang a test
_FILLER = b"\xff" * (64 << 10)


@dataclass
class ServedFile:
    """One file of a repository and how the server misbehaves about it."""

    data: bytes
    advertised_sha256: str | None
    advertised_size: int | str | None  # a str is sent as it is ("-5", "abc")
    cut_after: list[int] = field(default_factory=list)  # one entry per coming GET: bytes sent before closing
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    endless: bool = False  # after the data, keep sending filler until the client hangs up (or ENDLESS_CAP)
    redirect_location: str | None = None  # the resolve URL's Location instead of the blob (any scheme, or "")
    body_headers: dict[str, str | None] = field(default_factory=dict)  # set (None: drop) on the bytes reply

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class HubServer:
    """Serves repositories over HTTP in a background thread; use as a context manager."""

    def __init__(self, redirect: bool = True, ignore_range: bool = False, tls: ssl.SSLContext | None = None):
        self.files: dict[tuple[str, str], ServedFile] = {}
        self.redirect, self.ignore_range = redirect, ignore_range
        self.gets: collections.Counter = collections.Counter()
        self.sent: collections.Counter = collections.Counter()  # body bytes written per path
        self.order: list[str] = []  # the path of every GET that served bytes, in the order they came
        self.ranges: dict[str, list[str | None]] = collections.defaultdict(list)
        self.gate = threading.Event()
        self.gate.set()
        self.body_started = threading.Event()
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.scheme = "http" if tls is None else "https"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL, e.g. http://127.0.0.1:12345."""
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def add_file(
        self,
        repo_id: str,
        filename: str,
        data: bytes,
        *,
        advertised_sha256: str | None = "real",
        advertised_size: int | None | str = "real",
    ) -> ServedFile:
        """Serve `data` as `repo_id/filename`; "real" advertises the true checksum/size, None none.

        Other fault settings are fields of the returned `ServedFile`.
        """
        digest = hashlib.sha256(data).hexdigest()
        served = ServedFile(
            data,
            digest if advertised_sha256 == "real" else advertised_sha256,
            len(data) if advertised_size == "real" else advertised_size,
        )
        self.files[(repo_id, filename)] = served
        return served

    def blob_path(self, served: ServedFile) -> str:
        """The path whose GETs serve this file's bytes."""
        return f"/blobs/{served.sha256}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()


def _handler_for(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self._route(send_body=False)

        def do_GET(self) -> None:
            self._route(send_body=True)

        def _route(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            if path.startswith("/api/models/"):
                return self._api(path.removeprefix("/api/models/"))
            if path.startswith("/blobs/"):
                served = next(
                    (f for f in hub.files.values() if f.sha256 == path.removeprefix("/blobs/")), None
                )
                return self._bytes(path, served, send_body)
            parts = path.strip("/").split("/")
            if len(parts) >= 5 and parts[2] == "resolve":
                served = hub.files.get(("/".join(parts[:2]), "/".join(parts[4:])))
                if served is None:
                    return self._not_found("/".join(parts[:2]))
                if served is not None and (hub.redirect or served.redirect_location is not None):
                    return self._redirect(served)
                return self._bytes(path, served, send_body)
            self.send_error(404)

        def _not_found(self, repo_id: str) -> None:
            """A 404 with the Hub's error code: RepoNotFound, or EntryNotFound in a repository it serves."""
            known = any(repo == repo_id for repo, _ in hub.files)
            self.send_response(404, "Entry not found" if known else "Repository not found")
            self.send_header("X-Error-Code", "EntryNotFound" if known else "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _hub_headers(self, served: ServedFile) -> dict[str, str]:
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{served.sha256}"'}
            if served.advertised_sha256:
                headers["X-Linked-Etag"] = f'"{served.advertised_sha256}"'
            if served.advertised_size is not None:
                headers["X-Linked-Size"] = str(served.advertised_size)
            return headers

        def _redirect(self, served: ServedFile) -> None:
            self.send_response(302)
            headers = {
                **self._hub_headers(served),
                "Location": (
                    f"{hub.endpoint}{hub.blob_path(served)}"
                    if served.redirect_location is None
                    else served.redirect_location
                ),
                "Content-Length": "0",
            }
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()

        def _bytes(self, path: str, served: ServedFile | None, send_body: bool) -> None:
            if served is None:
                return self.send_error(404)
            data, start, cut = served.data, 0, None
            header = self.headers.get("Range")
            if send_body:
                with hub.lock:
                    hub.gets[path] += 1
                    hub.order.append(path)
                    hub.ranges[path].append(header)
                    cut = served.cut_after.pop(0) if served.cut_after else None
            headers = {"Accept-Ranges": "bytes"}
            if header and not hub.ignore_range:
                start = int(header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):  # nothing there: what real servers answer
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                self.send_response(206)
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            else:
                self.send_response(200)
            headers.update(
                self._hub_headers(served)
            )  # huggingface_hub follows same-host redirects: read here
            if served.send_length:
                headers["Content-Length"] = str(len(data) - start)
            for name, value in {**headers, **served.body_headers}.items():
                if value is not None:
                    self.send_header(name, value)
            self.end_headers()
            if send_body:
                hub.body_started.set()
                hub.gate.wait()
                end = len(data) if cut is None else min(len(data), start + cut)
                self._send(path, data[start:end])
                while served.endless and cut is None and hub.sent[path] < ENDLESS_CAP:
                    if not self._send(path, _FILLER):
                        break

        def _send(self, path: str, chunk: bytes) -> bool:
            try:
                self.wfile.write(chunk)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return False  # the client hung up
            with hub.lock:
                hub.sent[path] += len(chunk)
            return True

        def _api(self, rest: str) -> None:
            parts = rest.split("/")
            repo_id, kind = "/".join(parts[:2]), parts[2] if len(parts) > 2 else ""
            names = sorted(name for repo, name in hub.files if repo == repo_id)
            if not names:
                self.send_response(404, "Repository not found")
                self.send_header("X-Error-Code", "RepoNotFound")  # what the Hub sends; clients key on it
                self.send_header("Content-Length", "0")
                return self.end_headers()
            if kind == "revision":
                body = {"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": n} for n in names]}
            elif kind == "tree":
                body = [
                    {"type": "file", "path": n, "size": len(hub.files[(repo_id, n)].data), "oid": COMMIT}
                    for n in names
                ]
            else:
                return self.send_error(404)
            encoded = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

    return Handler
