"""Tokenizer first: found or fetched (from a real Hub-like server on 127.0.0.1) before any weight is read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cogvlm import api
from cogvlm.checkpoints.download import DownloadConfig
from cogvlm.checkpoints.tokenizer_fetch import checkpoint_tokenizer
from cogvlm.errors import CheckpointError, TokenizerError
from tests.checkpoints.bundles import zip_directory
from tests.checkpoints.hub_server import COMMIT, HubServer
from tests.golden import golden_dir

pytest.importorskip("huggingface_hub")

VICUNA = "lmsys/vicuna-7b-v1.5"
GOLDEN_SAT = golden_dir() / "cogvlm" / "sat_checkpoint"
TOKENIZER_BYTES = (golden_dir() / "tokenizer.model").read_bytes()
REPO_ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, hub: HubServer | None = None, **settings) -> DownloadConfig:
    endpoint = hub.endpoint if hub is not None else "http://127.0.0.1:9"
    return DownloadConfig(
        sat_home=tmp_path / "sat_home", endpoint=endpoint, hf_cache_dir=tmp_path / "hf", **settings
    )


def _broken_checkpoint(tmp_path: Path) -> Path:
    """The golden SAT checkpoint with its weight file cut to half, and no tokenizer beside it."""
    target = tmp_path / "broken"
    shutil.copytree(GOLDEN_SAT, target)
    weights = target / "1" / "mp_rank_00_model_states.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return target


def _offline_message(cache: Path) -> str:
    return (
        f"tokenizer: tokenizer.model of lmsys/vicuna-7b-v1.5 is not in the Hugging Face cache {cache} and "
        "offline mode is on (--offline, COGVLM_OFFLINE or HF_HUB_OFFLINE); to get it, run "
        f"`hf download lmsys/vicuna-7b-v1.5 tokenizer.model --cache-dir {cache}` where the Hub (or a mirror "
        "named by HF_ENDPOINT) can be reached, with HF_HUB_OFFLINE and COGVLM_OFFLINE unset; or pass a "
        "tokenizer.model you have: --tokenizer PATH (Python: load(..., local_tokenizer=PATH))"
    )


def test_missing_tokenizer_is_fetched_into_the_cache_and_reused(tmp_path, capsys):
    with HubServer() as hub:
        served = hub.add_file(VICUNA, "tokenizer.model", TOKENIZER_BYTES)
        session = api.load(GOLDEN_SAT, download=_config(tmp_path, hub))
        again = api.load(GOLDEN_SAT, download=_config(tmp_path, hub))
        assert hub.gets[hub.blob_path(served)] == 1
    expected = tmp_path / "hf" / "models--lmsys--vicuna-7b-v1.5" / "snapshots" / COMMIT / "tokenizer.model"
    assert Path(session.tokenizer.source) == Path(again.tokenizer.source) == expected
    assert expected.read_bytes() == TOKENIZER_BYTES
    assert session.tokenizer.encode("a red box") == api.load(
        GOLDEN_SAT, local_tokenizer=str(golden_dir() / "tokenizer.model")
    ).tokenizer.encode("a red box")
    assert f"tokenizer: fetching tokenizer.model of {VICUNA} from {hub.endpoint}" in capsys.readouterr().err
    offline = checkpoint_tokenizer(GOLDEN_SAT, None, _config(tmp_path, is_offline=True))
    assert Path(offline.source) == expected  # the cached file serves offline runs


def test_tokenizer_comes_before_the_weights_of_a_broken_checkpoint(tmp_path):
    broken = _broken_checkpoint(tmp_path)
    cache = tmp_path / "hf"
    with pytest.raises(TokenizerError) as offline:
        api.load(broken, download=_config(tmp_path, is_offline=True))
    assert str(offline.value) == _offline_message(cache)
    with HubServer() as hub:
        hub.add_file(VICUNA, "tokenizer.model", TOKENIZER_BYTES)
        with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt"):
            api.load(broken, download=_config(tmp_path, hub))
    assert list(cache.glob("models--lmsys--vicuna-7b-v1.5/snapshots/*/tokenizer.model"))


def test_tokenizer_is_fetched_before_the_checkpoint_archive(tmp_path):
    bundle = zip_directory(GOLDEN_SAT, "cogvlm-chat-v1.1")
    with HubServer() as hub:
        archive = hub.add_file("THUDM/CogVLM", "cogvlm-chat-v1.1.zip", bundle)
        with pytest.raises(TokenizerError, match=f"{hub.endpoint} has no tokenizer.model of {VICUNA}"):
            api.load("cogvlm-chat-v1.1", download=_config(tmp_path, hub))
        assert hub.gets[hub.blob_path(archive)] == 0  # nothing of the 35 GB was asked for
        tokenizer = hub.add_file(VICUNA, "tokenizer.model", TOKENIZER_BYTES)
        session = api.load("cogvlm-chat-v1.1", download=_config(tmp_path, hub))
        assert hub.order == [hub.blob_path(tokenizer), hub.blob_path(archive)]
    assert session.source.path == tmp_path / "sat_home" / "cogvlm-chat-v1.1"


def test_environment_endpoint_and_hf_home_are_honoured(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "COGVLM_OFFLINE", "COGVLM_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("SAT_HOME", str(tmp_path / "sat_home"))
    with HubServer() as hub:
        hub.add_file(VICUNA, "tokenizer.model", TOKENIZER_BYTES)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        tokenizer = checkpoint_tokenizer(GOLDEN_SAT)
        assert sum(hub.gets.values()) == 1
    cached = tmp_path / "hf_home" / "hub" / "models--lmsys--vicuna-7b-v1.5" / "snapshots" / COMMIT
    assert Path(tokenizer.source) == cached / "tokenizer.model"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the cache must serve
    assert Path(checkpoint_tokenizer(GOLDEN_SAT).source) == cached / "tokenizer.model"


def test_explicit_repo_id_is_fetched_and_a_tokenizer_beside_the_checkpoint_needs_no_network(tmp_path):
    own = tmp_path / "own"
    shutil.copytree(GOLDEN_SAT, own)
    (own / "tokenizer.model").write_bytes(TOKENIZER_BYTES)
    offline = _config(tmp_path, is_offline=True)
    assert Path(checkpoint_tokenizer(own, None, offline).source) == own / "tokenizer.model"
    with HubServer() as hub:
        hub.add_file("org/tok", "tokenizer.model", TOKENIZER_BYTES)
        fetched = checkpoint_tokenizer(own, "org/tok", _config(tmp_path, hub))
    assert Path(fetched.source).parent.parent.parent.name == "models--org--tok"
    with pytest.raises(TokenizerError, match="tokenizer 'absent.model' not found"):
        checkpoint_tokenizer(own, "absent.model", offline)  # a file name is never looked up on the Hub


def test_cli_offline_without_tokenizer_says_what_to_do(tmp_path):
    broken = _broken_checkpoint(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COGVLM_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "cogvlm.cli", "chat", "--from_pretrained", str(broken)]
    result = subprocess.run(
        [*command, "--offline", "--image", "", "--query", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode != 0
    assert _offline_message(tmp_path / "hf_home" / "hub") in result.stderr
    with_file = subprocess.run(
        [
            *command,
            "--tokenizer",
            str(golden_dir() / "tokenizer.model"),
            "--offline",
            "--image",
            "",
            "--query",
            "hi",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert with_file.returncode != 0
    assert "mp_rank_00_model_states.pt" in with_file.stderr  # past the tokenizer, stopped at the weights
    assert "tokenizer" not in with_file.stderr


def test_a_checkpoint_that_cannot_exist_is_reported_before_the_tokenizer(tmp_path):
    with HubServer() as hub:
        hub.add_file(VICUNA, "tokenizer.model", TOKENIZER_BYTES)
        with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'}: no such checkpoint directory"):
            api.load(tmp_path / "nope", download=_config(tmp_path, hub))
        with pytest.raises(CheckpointError, match="'no-such-model': no directory .* no catalog entry"):
            api.load("no-such-model", download=_config(tmp_path, hub))
        assert hub.order == []
