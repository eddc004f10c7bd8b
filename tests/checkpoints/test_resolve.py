"""`--from_pretrained` resolution and auto-download, against a real HTTP server on 127.0.0.1.

The served checkpoint is the golden tiny CogVLM, zipped as SAT publishes its bundles (`<name>.zip` holding
`<name>/`) under the real catalog name and repository path, so the catalog's URLs are exercised as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from zipfile import ZIP_DEFLATED

import pytest
import torch

from cogvlm import api, cli
from cogvlm.checkpoints.download import DownloadConfig, record_path, verified_record
from cogvlm.checkpoints.hf_format import save_hf_checkpoint
from cogvlm.checkpoints.listing import render_listing
from cogvlm.checkpoints.loading import load_model
from cogvlm.checkpoints.resolve import resolve_checkpoint
from cogvlm.errors import CheckpointError, DownloadError
from tests.checkpoints.bundles import corrupt, zip_directory, zip_with_members
from tests.checkpoints.hub_server import HubServer
from tests.golden import golden_dir

NAME, REPO = "cogvlm-chat-v1.1", "THUDM/CogVLM"
ARCHIVE = f"{NAME}.zip"
GOLDEN_SAT = golden_dir() / "cogvlm" / "sat_checkpoint"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle() -> bytes:
    """The golden checkpoint as `cogvlm-chat-v1.1.zip`."""
    return zip_directory(GOLDEN_SAT, NAME)


@pytest.fixture(scope="module")
def golden_state() -> dict[str, torch.Tensor]:
    """The golden model's weights, loaded from its own directory."""
    return load_model(GOLDEN_SAT)[0].state_dict()


def _config(home: Path, hub: HubServer | None = None, **settings) -> DownloadConfig:
    endpoint = hub.endpoint if hub is not None else "http://127.0.0.1:9"
    return DownloadConfig(sat_home=home, endpoint=endpoint, retry_wait_s=0.01, **settings)


def _tree(home: Path) -> list[str]:
    return sorted(p.relative_to(home).as_posix() for p in home.rglob("*"))


def _assert_golden_weights(path: Path, golden_state) -> None:
    state = load_model(path)[0].state_dict()
    assert state.keys() == golden_state.keys()
    for key, tensor in golden_state.items():
        assert torch.equal(state[key], tensor), key


def test_catalog_name_is_downloaded_extracted_and_loads(tmp_path, bundle, golden_state, capsys):
    home = tmp_path / "sat_home"
    with HubServer() as hub:
        served = hub.add_file(REPO, ARCHIVE, bundle)
        path = resolve_checkpoint(NAME, _config(home, hub))
        again = resolve_checkpoint(NAME, _config(home, hub))
        assert hub.gets[hub.blob_path(served)] == 1
    assert path == again == home / NAME
    assert re.search(rf"{re.escape(ARCHIVE)}: \[#+\] 100\.0% 1\.\d MB/1\.\d MB", capsys.readouterr().err)
    files = {p.relative_to(GOLDEN_SAT).as_posix() for p in GOLDEN_SAT.rglob("*")}
    assert _tree(home) == sorted({f"{NAME}/{f}" for f in files} | {NAME, ".locks", f".locks/{NAME}.lock"})
    _assert_golden_weights(path, golden_state)


def test_api_load_takes_an_alias_and_finds_its_current_version(tmp_path, bundle, capsys):
    home = tmp_path / "sat_home"
    with HubServer() as hub:
        hub.add_file(REPO, ARCHIVE, bundle)
        session = api.load(
            "cogvlm-chat", download=_config(home, hub), local_tokenizer=str(golden_dir() / "tokenizer.model")
        )
    assert session.source.path == home / NAME
    assert session.source.format == "sat"
    assert f"cogvlm-chat: resolved to the current version, {NAME}" in capsys.readouterr().err


def test_connection_cut_mid_file_resumes_to_a_verified_checkpoint(tmp_path, bundle, golden_state):
    home = tmp_path / "sat_home"
    with HubServer() as hub:
        served = hub.add_file(REPO, ARCHIVE, bundle)
        served.cut_after = [700_000]
        path = resolve_checkpoint(NAME, _config(home, hub))
        assert hub.ranges[hub.blob_path(served)] == [None, "bytes=700000-"]
    _assert_golden_weights(path, golden_state)


@pytest.mark.parametrize(
    ("damage", "advertise", "error", "message"),
    [
        ("corrupt", True, DownloadError, r"SHA-256 .* does not match"),
        (
            "truncate",
            True,
            DownloadError,
            r"announces \d+ bytes \(Content-Length\) from byte 0 of a \d+-byte",
        ),
        ("corrupt", False, CheckpointError, r"is corrupted \(Bad CRC-32"),
        ("truncate", False, CheckpointError, "not a readable zip archive"),
    ],
    ids=["corrupt-checksum", "truncated-size", "corrupt-crc", "truncated-zip"],
)
def test_damaged_archive_is_rejected_and_leaves_nothing_under_sat_home(
    tmp_path, bundle, damage, advertise, error, message
):
    damaged = corrupt(bundle, len(bundle) // 2) if damage == "corrupt" else bundle[: len(bundle) // 2]
    home = tmp_path / "sat_home"
    with HubServer(redirect=advertise) as hub:
        hub.add_file(
            REPO,
            ARCHIVE,
            damaged,
            advertised_sha256=hashlib.sha256(bundle).hexdigest() if advertise else None,
            advertised_size=len(bundle) if advertise else None,
        )
        with pytest.raises(error, match=message):
            resolve_checkpoint(NAME, _config(home, hub, allow_unverified=not advertise))
    assert _tree(home) == [".locks", f".locks/{NAME}.lock"]  # the lock file is empty and reused


def test_archive_with_parent_directory_members_is_refused(tmp_path):
    evil = zip_with_members({f"{NAME}/latest": b"1", f"{NAME}/../../escaped.txt": b"owned"})
    home = tmp_path / "a" / "sat_home"
    with HubServer() as hub:
        hub.add_file(REPO, ARCHIVE, evil)
        with pytest.raises(CheckpointError, match=r"refusing member .*\.\./\.\./escaped\.txt.*escape"):
            resolve_checkpoint(NAME, _config(home, hub))
    assert not list(tmp_path.rglob("escaped.txt"))
    assert _tree(home) == [".locks", f".locks/{NAME}.lock"]


def _read_lines(stream, into: list[str]) -> None:
    for line in stream:
        into.append(line)


def test_four_processes_download_the_archive_exactly_once(tmp_path, bundle, golden_state):
    home = tmp_path / "sat_home"
    environment = {k: v for k, v in os.environ.items() if k not in ("COGVLM_OFFLINE", "HF_HUB_OFFLINE")}
    environment.update(
        SAT_HOME=str(home), PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    with HubServer() as hub:
        served = hub.add_file(REPO, ARCHIVE, bundle)
        hub.gate.clear()  # the first GET's body waits until every other process is seen waiting on the lock
        command = [sys.executable, "-m", "cogvlm.cli", "download", NAME, "--endpoint", hub.endpoint]
        processes = [
            subprocess.Popen(
                command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        errors = [[] for _ in processes]
        readers = [
            threading.Thread(target=_read_lines, args=(p.stderr, e))
            for p, e in zip(processes, errors, strict=True)
        ]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            waiting = sum(any("waiting for" in line for line in lines) for lines in errors)
            if hub.body_started.is_set() and waiting == 3:
                break
            assert all(p.poll() is None for p in processes), errors
            time.sleep(0.05)
        hub.gate.set()
        codes = [p.wait(timeout=180) for p in processes]
        outputs = [p.stdout.read().strip() for p in processes]
        for reader in readers:
            reader.join()
        assert hub.gets[hub.blob_path(served)] == 1
    assert codes == [0, 0, 0, 0], errors
    assert outputs == [str(home / NAME)] * 4
    assert sum(any("waiting for" in line for line in lines) for lines in errors) == 3
    _assert_golden_weights(home / NAME, golden_state)


def test_offline_mode_uses_what_is_there_and_names_what_is_not(tmp_path, bundle):
    home = tmp_path / "sat_home"
    offline = DownloadConfig.from_environment({"SAT_HOME": str(home), "COGVLM_OFFLINE": "1"})
    with pytest.raises(
        DownloadError, match=rf"{NAME}: not in .* offline mode is on .*cogvlm download {NAME}"
    ):
        resolve_checkpoint(NAME, offline)
    with HubServer() as hub:
        served = hub.add_file(REPO, ARCHIVE, bundle)
        resolve_checkpoint(NAME, _config(home, hub))
        assert resolve_checkpoint(NAME, offline) == home / NAME
        assert hub.gets[hub.blob_path(served)] == 1


def test_kept_archive_is_extracted_again_without_network(tmp_path, bundle):
    home = tmp_path / "sat_home"
    with HubServer() as hub:
        hub.add_file(REPO, ARCHIVE, bundle)
        resolve_checkpoint(NAME, _config(home, hub, keep_archive=True))
    assert (home / ARCHIVE).read_bytes() == bundle
    for path in sorted((home / NAME).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (home / NAME).rmdir()
    assert resolve_checkpoint(NAME, _config(home, is_offline=True)) == home / NAME
    assert (home / NAME / "model_config.json").is_file()


def test_local_directory_and_sat_home_folders_come_before_the_catalog(tmp_path, monkeypatch):
    home = tmp_path / "sat_home"
    (home / "my-finetune").mkdir(parents=True)
    (home / NAME).mkdir()
    config = _config(home, is_offline=True)
    assert resolve_checkpoint(GOLDEN_SAT, config) == GOLDEN_SAT
    assert resolve_checkpoint("my-finetune", config) == home / "my-finetune"
    assert resolve_checkpoint(NAME, config) == home / NAME
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cogagent-chat").mkdir()
    assert resolve_checkpoint("cogagent-chat", config) == Path("cogagent-chat")


def test_unknown_name_and_missing_path_are_clear_errors(tmp_path):
    config = _config(tmp_path / "sat_home", is_offline=True)
    with pytest.raises(CheckpointError, match=r"'cogvlm-nope': no directory .* known: .*cogagent-chat"):
        resolve_checkpoint("cogvlm-nope", config)
    with pytest.raises(CheckpointError, match=r"absent/dir: no such checkpoint directory"):
        resolve_checkpoint(tmp_path / "absent" / "dir", config)
    with pytest.raises(CheckpointError, match=r"no such checkpoint directory"):
        resolve_checkpoint("./not-here", config)


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory) -> dict[str, bytes]:
    """The golden checkpoint in HF format (three safetensors shards and an index), plus a remote-code file."""
    directory = tmp_path_factory.mktemp("hf") / "cogvlm-chat-hf"
    model, info = load_model(GOLDEN_SAT)
    save_hf_checkpoint(directory, info.config, model.state_dict(), max_shard_bytes=600_000)
    files = {path.name: path.read_bytes() for path in directory.iterdir()}
    return {**files, "modeling_cogvlm.py": b"raise SystemExit('remote code must not be fetched')\n"}


def test_hf_repo_id_is_fetched_into_the_hf_cache_and_honoured_offline(tmp_path, hf_files, golden_state):
    pytest.importorskip("huggingface_hub")
    with HubServer() as hub:
        config = _config(tmp_path / "sat_home", hub, hf_cache_dir=tmp_path / "hf_cache")
        for name, data in hf_files.items():
            hub.add_file("THUDM/cogvlm-chat-hf", name, data)
        path = resolve_checkpoint("THUDM/cogvlm-chat-hf", config)
        fetched = sum(hub.gets.values())
        by_catalog_name = resolve_checkpoint("cogvlm-chat-hf", config)
        assert sum(hub.gets.values()) == fetched
    assert fetched == len(hf_files) - 1
    assert path == by_catalog_name
    assert path.is_relative_to(tmp_path / "hf_cache")
    assert sorted(p.name for p in path.iterdir()) == sorted(set(hf_files) - {"modeling_cogvlm.py"})
    offline = DownloadConfig(sat_home=config.sat_home, is_offline=True, hf_cache_dir=config.hf_cache_dir)
    assert resolve_checkpoint("THUDM/cogvlm-chat-hf", offline) == path
    _assert_golden_weights(path, golden_state)


def test_hf_repo_offline_and_not_cached_is_a_clear_error(tmp_path):
    pytest.importorskip("huggingface_hub")
    config = _config(tmp_path / "sat_home", is_offline=True, hf_cache_dir=tmp_path / "hf_cache")
    with pytest.raises(
        DownloadError, match="THUDM/cogagent-chat-hf: not in the Hugging Face cache and offline"
    ):
        resolve_checkpoint("cogagent-chat-hf", config)


def test_unknown_hf_repository_is_a_clear_error(tmp_path):
    pytest.importorskip("huggingface_hub")
    with HubServer() as hub:
        config = _config(tmp_path, hub, hf_cache_dir=tmp_path / "hf_cache")
        with pytest.raises(DownloadError, match="someone/absent: no such repository at http://127.0.0.1"):
            resolve_checkpoint("someone/absent", config)


def test_hf_repo_without_huggingface_hub_names_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    with pytest.raises(
        DownloadError, match=r"THUDM/cogvlm-chat-hf .* needs huggingface_hub: pip install 'cogvlm\[hub\]'"
    ):
        resolve_checkpoint("THUDM/cogvlm-chat-hf", _config(tmp_path))


def test_cli_download_reports_failures_in_one_line(tmp_path, capsys):
    home = str(tmp_path / "sat_home")
    assert cli.main(["download", "cogvlm-nope", "--sat_home", home]) == 2
    assert capsys.readouterr().err.startswith("cogvlm download: error: 'cogvlm-nope': no directory ")
    assert cli.main(["download", "cogagent-vqa", "--sat_home", home, "--offline"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cogvlm download: error: cogagent-vqa: not in ") and "offline mode is on" in error
    assert len(error.strip().splitlines()) == 1


# --- Interrupted runs, and what they leave under SAT_HOME ---------------------------------------------------

# Runs `cogvlm ARGS...` after (1) pausing for good once the first zip member is extracted, touching PAUSED,
# and/or (2) limiting the size of any file it writes (RLIMIT_FSIZE): python -c DRIVER PAUSED FSIZE ARGS...
_DRIVER = """
import resource, signal, sys, time
from pathlib import Path
from cogvlm.checkpoints import archive

paused, file_size_limit = sys.argv[1], int(sys.argv[2])
if paused:
    copy_member = archive._copy_member

    def copy_then_pause(*args):
        copy_member(*args)
        Path(paused).touch()
        time.sleep(300)

    archive._copy_member = copy_then_pause
if file_size_limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
from cogvlm import cli
sys.exit(cli.main(sys.argv[3:]))
"""


def _cli_process(home: Path, hub: HubServer, paused: str = "", file_size_limit: int = 0) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in ("COGVLM_OFFLINE", "HF_HUB_OFFLINE")}
    environment.update(
        SAT_HOME=str(home), PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    command = [sys.executable, "-c", _DRIVER, paused, str(file_size_limit), "download", NAME]
    return subprocess.Popen(
        command + ["--endpoint", hub.endpoint],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _golden_tree() -> list[str]:
    files = {p.relative_to(GOLDEN_SAT).as_posix() for p in GOLDEN_SAT.rglob("*")}
    return sorted({f"{NAME}/{f}" for f in files} | {NAME, ".locks", f".locks/{NAME}.lock"})


@pytest.mark.parametrize("next_run", ["online", "offline"])
def test_kill_during_extraction_keeps_the_verified_archive_and_the_next_run_cleans_up(
    tmp_path, bundle, golden_state, next_run
):
    home, paused = tmp_path / "sat_home", tmp_path / "paused"
    with HubServer() as hub:
        served = hub.add_file(REPO, ARCHIVE, bundle)
        process = _cli_process(home, hub, paused=str(paused))
        deadline = time.monotonic() + 120
        while not paused.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the download never reached the extraction"
            time.sleep(0.05)
        process.kill()  # SIGKILL: no handler, no finally block runs
        process.communicate(timeout=60)
        (staging,) = home.glob(f".{NAME}.tmp-*")
        assert [p.name for p in staging.rglob("*") if p.is_file()] == ["mp_rank_00_model_states.pt"]
        other = home / ".cogagent-chat.tmp-1234"  # another name's staging: not this run's to remove
        other.mkdir()
        listing = render_listing(_config(home, hub, hf_cache_dir=tmp_path / "hf_cache"))
        assert re.search(
            rf"\.downloads/{re.escape(ARCHIVE)} +verified archive .*without downloading", listing
        )
        assert re.search(rf"{re.escape(staging.name)} +staging folder", listing)

        config = _config(home, hub) if next_run == "online" else _config(home, is_offline=True)
        path = resolve_checkpoint(NAME, config)
        assert hub.gets[hub.blob_path(served)] == 1  # the archive was not downloaded again
    assert _tree(home) == sorted(_golden_tree() + [other.name])
    _assert_golden_weights(path, golden_state)


def test_extraction_that_cannot_write_keeps_the_verified_archive_for_the_next_run(tmp_path, bundle):
    files = {
        f"{NAME}/{p.relative_to(GOLDEN_SAT).as_posix()}": p for p in GOLDEN_SAT.rglob("*") if p.is_file()
    }
    members = {name: path.read_bytes() for name, path in files.items()}
    padded = zip_with_members({**members, f"{NAME}/padding.bin": bytes(4 << 20)}, compression=ZIP_DEFLATED)
    largest_member = max(p.stat().st_size for p in GOLDEN_SAT.rglob("*") if p.is_file())
    limit = max(len(padded), largest_member) + (1 << 20)  # room for the download, not for padding.bin
    home = tmp_path / "sat_home"
    with HubServer() as hub:
        served = hub.add_file(REPO, ARCHIVE, padded)
        process = _cli_process(home, hub, file_size_limit=limit)
        _, error = process.communicate(timeout=180)
        assert process.returncode == 2, error
        assert re.search(
            r"cannot extract .*File too large.*the verified archive is kept for the next run", error
        )
        assert verified_record(home / ".downloads" / ARCHIVE) is not None
        assert not list(home.glob(f".{NAME}.tmp-*"))
        path = resolve_checkpoint(NAME, _config(home, hub))
        assert hub.gets[hub.blob_path(served)] == 1
    assert (path / "padding.bin").stat().st_size == 4 << 20
    assert not (home / ".downloads").exists()


@pytest.mark.parametrize("kind", ["file", "dangling-link"])
def test_target_that_is_not_a_folder_is_a_clear_error_before_any_download(tmp_path, bundle, kind):
    home = tmp_path / "sat_home"
    home.mkdir()
    if kind == "file":
        (home / NAME).write_text("notes")
        message = "exists but is not a checkpoint folder"
    else:
        (home / NAME).symlink_to(tmp_path / "elsewhere")
        message = r"a symbolic link to .*elsewhere, which does not exist"
    with HubServer() as hub:
        served = hub.add_file(REPO, ARCHIVE, bundle)
        with pytest.raises(CheckpointError, match=rf"{re.escape(NAME)}: {message}"):
            resolve_checkpoint(NAME, _config(home, hub))
        assert hub.gets[hub.blob_path(served)] == 0
    assert kind != "file" or (home / NAME).read_text() == "notes"


def test_stale_staging_link_is_removed_without_touching_what_it_points_to(tmp_path, bundle):
    home = tmp_path / "sat_home"
    home.mkdir()
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "data.txt").write_text("keep")
    (home / f".{NAME}.tmp-link").symlink_to(victim)
    with HubServer() as hub:
        hub.add_file(REPO, ARCHIVE, bundle)
        resolve_checkpoint(NAME, _config(home, hub))
    assert (victim / "data.txt").read_text() == "keep"
    assert _tree(home) == _golden_tree()


def test_lock_folder_that_cannot_be_made_is_a_clear_error(tmp_path, bundle):
    home = tmp_path / "sat_home"
    home.mkdir()
    (home / ".locks").write_text("not a folder")
    with HubServer() as hub:
        hub.add_file(REPO, ARCHIVE, bundle)
        with pytest.raises(
            DownloadError, match=rf"\.locks/{re.escape(NAME)}\.lock: cannot take the download lock"
        ):
            resolve_checkpoint(NAME, _config(home, hub))


def test_cli_download_refuses_an_unverifiable_archive_unless_allowed(tmp_path, bundle, capsys):
    home = str(tmp_path / "sat_home")
    with HubServer() as hub:
        hub.add_file(REPO, ARCHIVE, bundle, advertised_sha256=None)
        arguments = ["download", NAME, "--sat_home", home, "--endpoint", hub.endpoint]
        assert cli.main(arguments) == 2
        error = capsys.readouterr().err
        assert "cannot be verified; refused" in error and "--allow_unverified" in error
        assert cli.main([*arguments, "--allow_unverified"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "sat_home" / NAME)
    assert re.search(rf"WARNING: .*{re.escape(ARCHIVE)}: no SHA-256 is known .*UNVERIFIED", captured.err)


def test_offline_an_archive_recorded_without_a_checksum_needs_allow_unverified(tmp_path, bundle):
    home = tmp_path / "sat_home"
    (home / ".downloads").mkdir(parents=True)
    archive = home / ".downloads" / ARCHIVE
    archive.write_bytes(bundle)
    record_path(archive).write_text(json.dumps({"url": "u", "size_bytes": len(bundle), "sha256": None}))
    with pytest.raises(DownloadError, match=rf"{re.escape(NAME)}: not in .* offline mode is on"):
        resolve_checkpoint(NAME, _config(home, is_offline=True))
    path = resolve_checkpoint(NAME, _config(home, is_offline=True, allow_unverified=True))
    assert (path / "model_config.json").is_file()
    assert _tree(home) == _golden_tree()
