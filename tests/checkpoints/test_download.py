"""HTTP fetching against a real server on 127.0.0.1: resume, verification, redirects, errors, settings."""

from __future__ import annotations

import hashlib

import pytest

from cogvlm.checkpoints.download import DownloadConfig, fetch_file, probe_remote
from cogvlm.errors import ConfigError, DownloadError
from tests.checkpoints.bundles import corrupt
from tests.checkpoints.hub_server import HubServer

DATA = bytes(range(256)) * 4000  # 1,024,000 bytes
REPO, FILE = "org/repo", "blob.bin"


def _config(tmp_path, hub, **settings) -> DownloadConfig:
    return DownloadConfig(sat_home=tmp_path / "home", endpoint=hub.endpoint, retry_wait_s=0.01, **settings)


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
    assert _leftovers(tmp_path / "out") == [FILE]
    assert "blob.bin: [########################] 100.0% 1.0 MB/1.0 MB" in capsys.readouterr().err


def test_probe_reads_the_hub_checksum_and_size_from_the_redirect(tmp_path):
    with HubServer() as hub:
        served = hub.add_file(REPO, FILE, DATA)
        remote = probe_remote(_url(hub), _config(tmp_path, hub))
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
    assert _leftovers(tmp_path) == [FILE]


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


def test_truncated_file_fails_the_advertised_size_and_is_discarded(tmp_path):
    with HubServer() as hub:
        hub.add_file(REPO, FILE, DATA[:600_000], advertised_sha256=None, advertised_size=len(DATA))
        with pytest.raises(
            DownloadError, match=r"received 600000 bytes, expected 1024000; download discarded"
        ):
            fetch_file(_url(hub), tmp_path / FILE, _config(tmp_path, hub))
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
