"""HTTP fetching against a real server on 127.0.0.1 (HTTPS too): resume, verification, bounds, redirects."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import ssl
import subprocess
import threading
import time

import pytest

from cogvlm.checkpoints.download import DownloadConfig, fetch_file, verified_record
from cogvlm.checkpoints.http_client import probe_remote
from cogvlm.errors import ConfigError, DownloadError
from tests.checkpoints.bundles import corrupt
from tests.checkpoints.hub_server import ENDLESS_CAP, HubServer

DATA = bytes(range(256)) * 4000  # 1,024,000 bytes
REPO, FILE = "org/repo", "blob.bin"


def _config(tmp_path, hub, **settings) -> DownloadConfig:
    settings = {"retry_wait_s": 0.01, **settings}
    return DownloadConfig(sat_home=tmp_path / "home", endpoint=hub.endpoint, **settings)


def _url(hub) -> str:
    return f"{hub.endpoint}/{REPO}/resolve/main/{FILE}"


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_download_follows_the_redirect_verifies_and_shows_progress(tmp_path, capsys):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        path = fetch_file(_url(hub), tmp_path / "out" / FILE, _config(tmp_path, hub))
        assert hub.gets[hub.blob_path(served)] == 1
    assert path.read_bytes() == DATA
    assert _leftovers(tmp_path / "out") == [FILE, f"{FILE}.json"]  # the file and what it was verified against
    assert "blob.bin: [########################] 100.0% 1.0 MB/1.0 MB" in capsys.readouterr().err


def test_probe_reads_the_hub_checksum_and_size_from_the_redirect(tmp_path):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        remote = probe_remote(_url(hub), _config(tmp_path, hub).timeout_s)
    assert remote.sha256 == hashlib.sha256(DATA).hexdigest()
    assert remote.size_bytes == len(DATA)
    assert remote.location.endswith(hub.blob_path(served))


def test_connection_cut_mid_file_resumes_with_a_range_request(tmp_path):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        served.cut_after = [300_000, 200_000]
        path = fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        assert hub.ranges[hub.blob_path(served)] == [None, "bytes=300000-", "bytes=500000-"]
    assert path.read_bytes() == DATA


def test_partial_file_of_an_interrupted_run_is_resumed_by_the_next(tmp_path):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        served.cut_after = [300_000]
        with pytest.raises(
            DownloadError, match=r"connection closed after 300000 of 1024000 bytes.*run again"
        ):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub, max_retries=0))
        assert (tmp_path / f"{FILE}.part").stat().st_size == 300_000
        path = fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        assert hub.ranges[hub.blob_path(served)] == [None, "bytes=300000-"]
    assert path.read_bytes() == DATA
    assert _leftovers(tmp_path) == [FILE, f"{FILE}.json"]


def test_partial_file_of_another_version_is_discarded(tmp_path):
    with HubServer() as hub:
        hub.add_file(REPO, FILE, b"old" * 1000).cut_after = [100]
        with pytest.raises(DownloadError):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub, max_retries=0))
        served = hub.add_file(REPO, FILE, DATA)
        path = fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        assert hub.ranges[hub.blob_path(served)] == [None]
    assert path.read_bytes() == DATA


def test_server_that_ignores_range_is_read_again_from_the_start(tmp_path):
    with HubServer(ignore_range=True) as hub:
        served = hub.add_file(REPO, FILE, DATA)
        served.cut_after = [300_000]
        path = fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        assert hub.gets[hub.blob_path(served)] == 2
    assert path.read_bytes() == DATA


def test_corrupted_bytes_fail_the_advertised_sha256_and_are_discarded(tmp_path):
    with HubServer() as hub:
        hub.add_file(REPO, FILE, corrupt(DATA, 5000), advertised_sha256=hashlib.sha256(DATA).hexdigest())
        with pytest.raises(DownloadError, match=r"SHA-256 [0-9a-f]{64} does not match .*download discarded"):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
    assert _leftovers(tmp_path) == []


def test_body_shorter_than_the_advertised_size_is_refused_before_writing(tmp_path):
    with HubServer() as hub:
        full = hashlib.sha256(DATA).hexdigest()
        hub.add_file(REPO, FILE, DATA[:600_000], advertised_sha256=full, advertised_size=len(DATA))
        with pytest.raises(
            DownloadError,
            match=r"announces 600000 bytes \(Content-Length\) from byte 0 of a 1024000-byte file",
        ):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
    assert _leftovers(tmp_path) == []


def test_truncated_file_without_content_length_fails_the_advertised_size_and_is_discarded(tmp_path):
    with HubServer() as hub:
        full = hashlib.sha256(DATA).hexdigest()
        served = hub.add_file(REPO, FILE, DATA[:600_000], advertised_sha256=full, advertised_size=len(DATA))
        served.send_length = False
        with pytest.raises(
            DownloadError, match=r"received 600000 bytes, expected 1024000; download discarded"
        ):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        # The short body looked like a cut connection; the range after it got 416 (nothing there).
        assert hub.ranges[hub.blob_path(served)] == [None, "bytes=600000-"]
    assert _leftovers(tmp_path) == []


def test_catalog_checksum_is_checked_against_the_server(tmp_path):
    with HubServer() as hub:
        hub.add_file(REPO, FILE, DATA)
        with pytest.raises(DownloadError, match="the server's SHA-256 .* differs from the expected"):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub), sha256="ab" * 32)
    assert _leftovers(tmp_path) == []


def test_catalog_checksum_verifies_a_server_that_sends_none(tmp_path):
    with HubServer(redirect=False) as hub:
        hub.add_file(REPO, FILE, corrupt(DATA, 7), advertised_sha256=None, advertised_size=None)
        with pytest.raises(DownloadError, match="does not match"):
            fetch_file(
                _url(hub), tmp_path / FILE, _config(tmp_path, hub), sha256=hashlib.sha256(DATA).hexdigest()
            )
    assert _leftovers(tmp_path) == []


def test_missing_file_is_a_clear_error_without_retries(tmp_path):
    with HubServer() as hub:
        with pytest.raises(DownloadError, match=r"HTTP 404 .*\(no such file\)"):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))


def test_unreachable_server_gives_up_after_the_retries(tmp_path):
    config = DownloadConfig(
        sat_home=tmp_path, endpoint="http://127.0.0.1:9", max_retries=1, retry_wait_s=0.01
    )
    with pytest.raises(DownloadError, match="gave up after 2 attempts"):
        fetch_file("http://127.0.0.1:9/org/repo/resolve/main/x.zip", tmp_path / "x.zip", config)


def test_offline_mode_refuses_to_download(tmp_path):
    config = DownloadConfig(sat_home=tmp_path, is_offline=True)
    with pytest.raises(DownloadError, match="offline mode is on"):
        fetch_file("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", config)


def test_settings_come_from_the_environment_and_flags_override_them(tmp_path):
    environment = {"SAT_HOME": str(tmp_path), "HF_ENDPOINT": "https://mirror.example/", "HF_HUB_OFFLINE": "1"}
    config = DownloadConfig.from_environment(environment)
    assert (config.sat_home, config.endpoint, config.is_offline) == (tmp_path, "https://mirror.example", True)
    environment["COGVLM_ENDPOINT"] = "http://own.example"
    assert DownloadConfig.from_environment(environment).endpoint == "http://own.example"
    overridden = DownloadConfig.from_environment(environment, endpoint="http://flag.example/", sat_home=None)
    assert (overridden.endpoint, overridden.sat_home) == ("http://flag.example", tmp_path)
    default = DownloadConfig.from_environment({})
    assert default.sat_home.name == ".sat_models" and not default.is_offline
    assert default.endpoint == "https://huggingface.co"


def test_endpoint_must_be_an_http_url(tmp_path):
    with pytest.raises(ConfigError, match="endpoint='ftp://mirror' must be an http:// or https:// URL"):
        DownloadConfig(sat_home=tmp_path, endpoint="ftp://mirror")


# --- A body longer than expected, or sizes and ranges that contradict each other ---------------------------


def _watch_size(path, stop: threading.Event, sizes: list[int]) -> None:
    while not stop.is_set():
        with contextlib.suppress(FileNotFoundError):
            sizes.append(path.stat().st_size)
        time.sleep(0.001)


def test_endless_body_stops_at_the_expected_size_and_is_refused(tmp_path):
    sizes, stop = [], threading.Event()
    watcher = threading.Thread(target=_watch_size, args=(tmp_path / f"{FILE}.part", stop, sizes))
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        served.send_length, served.endless = False, True  # no Content-Length: only the client can stop it
        watcher.start()
        try:
            with pytest.raises(DownloadError, match=r"sends more than the expected 1024000 bytes.*discarded"):
                fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        finally:
            stop.set()
            watcher.join()
        sent = hub.sent[hub.blob_path(served)]
    assert sizes and max(sizes) <= len(DATA)  # the .part never grew past the expected size
    assert sent < ENDLESS_CAP // 8  # the client hung up instead of reading on
    assert _leftovers(tmp_path) == []


def test_content_length_longer_than_the_expected_size_is_refused_before_writing(tmp_path):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        served.body_headers = {"Content-Length": str(10 * len(DATA))}
        with pytest.raises(
            DownloadError, match=r"announces 10240000 bytes \(Content-Length\) from byte 0 of a 1024000-byte"
        ):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "content_range",
    [
        "bytes 300000-1023999/2048000",
        "bytes 0-1023999/1024000",
        "bytes 300000-500000/1024000",
        "bytes=x",
        None,
    ],
    ids=["other-total", "other-start", "short-range", "garbage", "missing"],
)
def test_resume_with_a_mismatched_content_range_is_refused_and_keeps_the_partial_file(
    tmp_path, content_range
):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        served.cut_after = [300_000]
        served.body_headers = {
            "Content-Range": content_range
        }  # the first, unranged GET is a 200 and ignores it
        with pytest.raises(DownloadError, match=r"Content-Range .*expected 'bytes 300000-1023999/1024000'"):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        assert hub.ranges[hub.blob_path(served)] == [None, "bytes=300000-"]
    assert (tmp_path / f"{FILE}.part").read_bytes() == DATA[:300_000]  # resumable once the server is fixed


@pytest.mark.parametrize("value", ["-5", "12abc", "1e6", "\u00b2", ""])
def test_size_header_that_is_not_a_byte_count_is_a_clear_error(tmp_path, value):
    with HubServer() as hub:
        hub.add_file(REPO, FILE, DATA, advertised_size=value)
        with pytest.raises(
            DownloadError, match=rf"header X-Linked-Size: {re.escape(repr(value))} is not a byte"
        ):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
    assert _leftovers(tmp_path) == []


def test_checksum_header_that_is_not_a_sha256_is_a_clear_error(tmp_path):
    with HubServer() as hub:
        hub.add_file(REPO, FILE, DATA, advertised_sha256="d41d8cd98f00b204e9800998ecf8427e")  # an MD5
        with pytest.raises(
            DownloadError, match=r"X-Linked-Etag: .*d41d8cd98f00b204e9800998ecf8427e.* not a SHA"
        ):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))


def test_redirect_hops_that_disagree_about_the_size_are_refused(tmp_path):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        served.body_headers = {"X-Linked-Size": "5"}
        with pytest.raises(
            DownloadError, match=r"the redirects disagree about the file: sizes \[5, 1024000\]"
        ):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))


def test_compressed_body_is_refused(tmp_path):
    with HubServer() as hub:
        hub.add_file(REPO, FILE, DATA).body_headers = {"Content-Encoding": "gzip"}
        with pytest.raises(DownloadError, match="Content-Encoding 'gzip' although identity was asked for"):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
    assert _leftovers(tmp_path) == []


def test_server_that_sends_no_size_is_refused_unless_the_caller_knows_it(tmp_path):
    digest = hashlib.sha256(DATA).hexdigest()
    with HubServer(redirect=False) as hub:
        served = hub.add_file(REPO, FILE, DATA, advertised_sha256=None, advertised_size=None)
        served.send_length = False
        with pytest.raises(
            DownloadError, match=r"sends no size \(X-Linked-Size or Content-Length\).*refused"
        ):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub), sha256=digest)
        assert hub.gets[f"/{REPO}/resolve/main/{FILE}"] == 0
        path = fetch_file(
            _url(hub), tmp_path / FILE, _config(tmp_path, hub), sha256=digest, size_bytes=len(DATA)
        )
    assert path.read_bytes() == DATA


def test_cut_body_without_content_length_is_resumed(tmp_path):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        served.send_length, served.cut_after = False, [300_000]
        path = fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        assert hub.ranges[hub.blob_path(served)] == [None, "bytes=300000-"]
    assert path.read_bytes() == DATA


def test_file_name_comes_from_the_caller_never_from_the_server(tmp_path):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        served.body_headers = {"Content-Disposition": 'attachment; filename="../../escaped.bin"'}
        path = fetch_file(_url(hub), tmp_path / "in" / FILE, _config(tmp_path, hub))
    assert path == tmp_path / "in" / FILE and path.read_bytes() == DATA
    assert not list(tmp_path.parent.rglob("escaped.bin"))


def test_partial_file_that_is_a_symbolic_link_is_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f"{FILE}.part").symlink_to(victim)
    with HubServer() as hub:
        hub.add_file(REPO, FILE, DATA)
        with pytest.raises(DownloadError, match=r"blob\.bin\.part: a symbolic link; refusing to write"):
            fetch_file(_url(hub), tmp_path / "out" / FILE, _config(tmp_path, hub))
    assert victim.read_text() == "keep me"


# --- Redirects ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["file", "ftp", "data"])
def test_redirect_to_another_scheme_is_refused(tmp_path, scheme):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(DATA)
    location = {"file": secret.as_uri(), "ftp": "ftp://127.0.0.1/x.bin", "data": "data:,abc"}[scheme]
    with HubServer() as hub:
        hub.add_file(REPO, FILE, DATA).redirect_location = location
        with pytest.raises(
            DownloadError, match=rf"refusing the redirect to '{scheme}:.*only http:// and https:// URLs"
        ):
            fetch_file(_url(hub), tmp_path / "out" / FILE, _config(tmp_path, hub))
    assert _leftovers(tmp_path / "out") == []


def test_redirect_loop_is_bounded(tmp_path):
    with HubServer() as hub:
        hub.add_file(REPO, FILE, DATA).redirect_location = _url(hub)
        with pytest.raises(DownloadError, match="more than 10 redirects"):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
    assert _leftovers(tmp_path) == []


def test_redirect_without_a_location_is_a_clear_error(tmp_path):
    with HubServer() as hub:
        hub.add_file(REPO, FILE, DATA).redirect_location = ""
        with pytest.raises(DownloadError, match=r"blob\.bin: a redirect without a Location header"):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (certificate path, key path)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _tls(certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_https_redirect_down_to_http_is_refused_and_up_from_http_is_followed(
    tmp_path, certificate, monkeypatch
):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the test certificate
    with HubServer(tls=_tls(certificate)) as secure, HubServer() as plain:
        assert secure.endpoint.startswith("https://")
        served = secure.add_file(REPO, FILE, DATA)
        plain.add_file(REPO, FILE, DATA).redirect_location = secure.endpoint + secure.blob_path(served)
        path = fetch_file(_url(plain), tmp_path / "up" / FILE, _config(tmp_path, plain))
        assert path.read_bytes() == DATA and secure.gets[secure.blob_path(served)] == 1

        plain_served = plain.files[(REPO, FILE)]
        served.redirect_location = plain.endpoint + plain.blob_path(plain_served)
        with pytest.raises(DownloadError, match=r"refusing the redirect to 'http://.*a downgrade from https"):
            fetch_file(_url(secure), tmp_path / "down" / FILE, _config(tmp_path, secure))
        assert plain.gets[plain.blob_path(plain_served)] == 0
    assert _leftovers(tmp_path / "down") == []


def test_untrusted_certificate_fails_at_once_without_retries(tmp_path, certificate):
    with HubServer(tls=_tls(certificate)) as secure:
        secure.add_file(REPO, FILE, DATA)
        with pytest.raises(DownloadError, match="CERTIFICATE_VERIFY_FAILED") as caught:
            fetch_file(
                _url(secure), tmp_path / FILE, _config(tmp_path, secure, max_retries=3, retry_wait_s=5)
            )
    assert "gave up" not in str(caught.value)


# --- Files without a checksum -------------------------------------------------------------------------------


def test_file_without_a_checksum_is_refused_and_says_how_to_allow_it(tmp_path):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA, advertised_sha256=None)
        with pytest.raises(
            DownloadError,
            match=r"no SHA-256 .* cannot be verified; refused\. .*--allow_unverified "
            r".*COGVLM_ALLOW_UNVERIFIED=1",
        ):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        assert hub.gets[hub.blob_path(served)] == 0
    assert _leftovers(tmp_path) == []


def test_allow_unverified_downloads_with_a_warning_even_when_quiet(tmp_path, capsys):
    with HubServer() as hub:
        hub.add_file(REPO, FILE, DATA, advertised_sha256=None)
        config = _config(tmp_path, hub, allow_unverified=True, show_progress=False)
        path = fetch_file(_url(hub), tmp_path / FILE, config)
    assert path.read_bytes() == DATA
    assert re.search(r"WARNING: .*blob\.bin: no SHA-256 is known .* UNVERIFIED", capsys.readouterr().err)


def test_allow_unverified_comes_from_the_environment_or_a_flag(tmp_path):
    assert not DownloadConfig.from_environment({}).allow_unverified
    assert DownloadConfig.from_environment({"COGVLM_ALLOW_UNVERIFIED": "1"}).allow_unverified
    assert DownloadConfig.from_environment({}, allow_unverified=True).allow_unverified


# --- Reuse of a verified file -------------------------------------------------------------------------------


def test_verified_file_is_reused_until_the_server_has_another_version(tmp_path, capsys):
    with HubServer() as hub:
        first = hub.add_file(REPO, FILE, DATA)
        fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        assert hub.gets[hub.blob_path(first)] == 1
        assert "blob.bin: already downloaded and verified; reusing" in capsys.readouterr().err
        second = hub.add_file(REPO, FILE, DATA[::-1])
        path = fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        assert hub.gets[hub.blob_path(second)] == 1
    assert path.read_bytes() == DATA[::-1]
    assert verified_record(path)["sha256"] == hashlib.sha256(DATA[::-1]).hexdigest()


def test_verified_file_is_reused_from_a_mirror_with_the_same_checksum(tmp_path):
    with HubServer() as first, HubServer() as mirror:
        first.add_file(REPO, FILE, DATA)
        served = mirror.add_file(REPO, FILE, DATA)
        fetch_file(_url(first), tmp_path / FILE, _config(tmp_path, first))
        fetch_file(_url(mirror), tmp_path / FILE, _config(tmp_path, mirror))
        assert mirror.gets[mirror.blob_path(served)] == 0


def test_size_larger_than_the_free_space_is_refused_before_writing(tmp_path):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA, advertised_size=10**19)
        with pytest.raises(DownloadError, match=r"downloading .* needs 10000000\.0 TB but only .* is free"):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
        assert hub.gets[hub.blob_path(served)] == 0
    assert _leftovers(tmp_path) == []


def test_settings_are_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"endpoint='http://' must be an http:// or https:// URL"):
        DownloadConfig(sat_home=tmp_path, endpoint="http://")
    with pytest.raises(ConfigError, match=r"retry_wait_s=-1 >= 0"):
        DownloadConfig(sat_home=tmp_path, retry_wait_s=-1)
