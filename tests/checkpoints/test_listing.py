"""`cogvlm list`: what is under SAT_HOME (format, size) and which catalog names are downloaded."""

from __future__ import annotations

import json
import re
import shutil

from cogvlm import cli
from cogvlm.checkpoints.download import DownloadConfig, record_path
from cogvlm.checkpoints.listing import catalog_status, list_leftovers, list_local, render_listing
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
    local_section = text[: text.index("\n\n")]
    assert ".downloads" not in local_section and "notes.txt" not in text
    assert re.search(r"\.downloads/cogagent-chat\.zip\.part +partial download +7\.0 B  resumed", text)


def test_cli_list_prints_json(tmp_path, capsys):
    home = _home(tmp_path)
    assert cli.main(["list", "--sat_home", str(home), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sat_home"] == str(home)
    assert [item["name"] for item in data["local"]] == ["cogagent-vqa.zip", "cogvlm-chat-v1.1", "my-hf"]
    assert [(item["kind"], item["size_bytes"]) for item in data["leftovers"]] == [("partial download", 7)]
    by_name = {item["name"]: item for item in data["catalog"]}
    assert by_name["cogvlm-chat-v1.1"]["local_path"] == str(home / "cogvlm-chat-v1.1")
    assert by_name["cogagent-chat-hf"]["source"] == "THUDM/cogagent-chat-hf"
    assert data["aliases"]["cogvlm-grounding-generalist"] == "cogvlm-grounding-generalist-v1.1"


def test_leftovers_of_interrupted_runs_are_listed_with_what_becomes_of_them(tmp_path):
    home = _home(tmp_path)
    archive = home / ".downloads" / "cogvlm-chat-v1.1.zip"
    archive.write_bytes(b"a" * 100)
    record_path(archive).write_text(json.dumps({"url": "u", "size_bytes": 100, "sha256": "0" * 64}))
    (home / ".downloads" / "cogagent-vqa.zip").write_bytes(b"b" * 10)  # no record: not verified
    staging = home / ".cogvlm-chat-v1.1.tmp-k2j4"
    (staging / "1").mkdir(parents=True)
    (staging / "1" / "mp_rank_00_model_states.pt").write_bytes(b"w" * 50)
    found = {item.path.relative_to(home).as_posix(): item for item in list_leftovers(home)}
    assert {path: (item.kind, item.size_bytes) for path, item in found.items()} == {
        ".downloads/cogagent-chat.zip.part": ("partial download", 7),
        ".downloads/cogagent-vqa.zip": ("unverified archive", 10),
        ".downloads/cogvlm-chat-v1.1.zip": ("verified archive", 100),
        ".cogvlm-chat-v1.1.tmp-k2j4": ("staging folder", 50),
    }
    assert "without downloading it again" in found[".downloads/cogvlm-chat-v1.1.zip"].fate
    assert "next download of cogvlm-chat-v1.1 removes it" in found[".cogvlm-chat-v1.1.tmp-k2j4"].fate
    text = render_listing(DownloadConfig(sat_home=home, hf_cache_dir=tmp_path / "hf_cache"))
    assert re.search(
        r"\.cogvlm-chat-v1\.1\.tmp-k2j4 +staging folder +50\.0 B  an interrupted extraction", text
    )


def test_listing_survives_link_cycles_and_dangling_links(tmp_path):
    home = tmp_path / "sat_home"
    (home / "looped" / "inner").mkdir(parents=True)
    (home / "looped" / "weights.bin").write_bytes(b"x" * 30)
    (home / "looped" / "inner" / "up").symlink_to(home / "looped")  # a cycle
    (home / "looped" / "gone.bin").symlink_to(tmp_path / "missing")
    assert [(item.name, item.size_bytes) for item in list_local(home)] == [("looped", 30)]
