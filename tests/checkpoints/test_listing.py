"""`cogvlm list`: what is under SAT_HOME (format, size) and which catalog names are downloaded."""

from __future__ import annotations

import json
import shutil

from cogvlm import cli
from cogvlm.checkpoints.download import DownloadConfig
from cogvlm.checkpoints.listing import catalog_status, list_local, render_listing
from tests.golden import golden_dir

GOLDEN_SAT = golden_dir() / "cogvlm" / "sat_checkpoint"


def _home(tmp_path):
    home = tmp_path / "sat_home"
    shutil.copytree(GOLDEN_SAT, home / "cogvlm-chat-v1.1")
    (home / "my-hf").mkdir()
    (home / "my-hf" / "config.json").write_text("{}")
    (home / "cogagent-vqa.zip").write_bytes(b"z" * 1234)
    (home / ".downloads").mkdir()
    (home / ".downloads" / "cogagent-chat.zip.part").write_bytes(b"partial")
    (home / "notes.txt").write_text("not a checkpoint")
    return home


def test_local_checkpoints_are_listed_with_format_and_size(tmp_path):
    home = _home(tmp_path)
    found = {item.name: (item.format, item.size_bytes) for item in list_local(home)}
    golden_bytes = sum(p.stat().st_size for p in GOLDEN_SAT.rglob("*") if p.is_file())
    assert found == {
        "cogvlm-chat-v1.1": ("sat", golden_bytes),
        "my-hf": ("hf", 2),
        "cogagent-vqa.zip": ("zip", 1234),
    }


def test_catalog_status_says_which_names_are_downloaded(tmp_path):
    config = DownloadConfig(sat_home=_home(tmp_path), hf_cache_dir=tmp_path / "hf_cache")
    local = {status.entry.name: status.local_path for status in catalog_status(config)}
    assert local["cogvlm-chat-v1.1"] == config.sat_home / "cogvlm-chat-v1.1"
    assert all(path is None for name, path in local.items() if name != "cogvlm-chat-v1.1")


def test_text_listing_names_local_and_remote_checkpoints(tmp_path):
    config = DownloadConfig(sat_home=_home(tmp_path), hf_cache_dir=tmp_path / "hf_cache")
    text = render_listing(config)
    lines = text.splitlines()
    assert lines[0] == f"Local checkpoints in {config.sat_home}:"
    assert any(line.split()[:2] == ["cogvlm-chat-v1.1", "sat"] for line in lines[1:4])
    downloaded = next(
        line for line in lines if line.strip().startswith("cogvlm-chat-v1.1 ") and "THUDM" in line
    )
    assert downloaded.rstrip().endswith(f"downloaded: {config.sat_home / 'cogvlm-chat-v1.1'}")
    assert "THUDM/CogAgent: cogagent-chat.zip" in text and "not downloaded" in text
    assert "cogvlm-chat -> cogvlm-chat-v1.1" in text
    assert ".downloads" not in text and "notes.txt" not in text


def test_cli_list_prints_json(tmp_path, capsys):
    home = _home(tmp_path)
    assert cli.main(["list", "--sat_home", str(home), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sat_home"] == str(home)
    assert [item["name"] for item in data["local"]] == ["cogagent-vqa.zip", "cogvlm-chat-v1.1", "my-hf"]
    by_name = {item["name"]: item for item in data["catalog"]}
    assert by_name["cogvlm-chat-v1.1"]["local_path"] == str(home / "cogvlm-chat-v1.1")
    assert by_name["cogagent-chat-hf"]["source"] == "THUDM/cogagent-chat-hf"
    assert data["aliases"]["cogvlm-grounding-generalist"] == "cogvlm-grounding-generalist-v1.1"
