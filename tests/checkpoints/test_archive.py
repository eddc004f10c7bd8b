"""Safe extraction: hostile or damaged archives are refused and leave nothing behind."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from cogvlm.checkpoints.archive import (
    MAX_MEMBERS,
    MAX_UNPACK_RATIO,
    UNPACK_ALLOWANCE_BYTES,
    ArchiveWriteError,
    extract_checkpoint_archive,
)
from cogvlm.checkpoints.resolve import check_sat_directory
from cogvlm.errors import CheckpointError
from tests.checkpoints.bundles import corrupt, zip_directory, zip_with_members
from tests.golden import golden_dir

GOLDEN_SAT = golden_dir() / "cogvlm" / "sat_checkpoint"


def _extract(tmp_path, data: bytes, folder: str = "model"):
    archive = tmp_path / "model.zip"
    archive.write_bytes(data)
    home = tmp_path / "home"
    home.mkdir()
    return extract_checkpoint_archive(archive, home / folder, folder, check=check_sat_directory), home


def test_checkpoint_archive_extracts_byte_identical_files(tmp_path):
    target, _ = _extract(tmp_path, zip_directory(GOLDEN_SAT, "model"))
    originals = sorted(p.relative_to(GOLDEN_SAT) for p in GOLDEN_SAT.rglob("*") if p.is_file())
    assert sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file()) == originals
    for relative in originals:
        assert (target / relative).read_bytes() == (GOLDEN_SAT / relative).read_bytes()


@pytest.mark.parametrize(
    ("members", "symlinks", "reason"),
    [
        ({"model/latest": b"1", "model/../escaped": b"x"}, None, "'..' would escape"),
        ({"../escaped": b"x"}, None, "'..' would escape"),
        ({"model/latest": b"1", "/tmp/escaped": b"x"}, None, "absolute path"),
        ({"model/latest": b"1", "C:/escaped": b"x"}, None, "drive letter"),
        ({"model\\..\\escaped": b"x"}, None, "absolute path or drive letter"),
        ({"model/latest": b"1"}, {"model/link": "/etc/passwd"}, "symbolic links are not allowed"),
        ({"model/latest": b"1", "other/latest": b"1"}, None, "outside the top-level folder 'model'"),
        ({"model": b"not a folder"}, None, "a file where the top-level folder"),
        ({}, None, "holds no files"),
    ],
    ids=[
        "dotdot-inside",
        "dotdot-top",
        "absolute",
        "drive",
        "backslash",
        "symlink",
        "outside",
        "file",
        "empty",
    ],
)
def test_unsafe_archive_is_refused_and_nothing_is_written(tmp_path, members, symlinks, reason):
    with pytest.raises(CheckpointError, match=reason):
        _extract(tmp_path, zip_with_members(members, symlinks))
    assert list((tmp_path / "home").iterdir()) == []
    assert not (tmp_path / "escaped").exists()


def test_duplicate_member_is_refused(tmp_path):
    with (
        pytest.warns(UserWarning, match="Duplicate name"),
        zipfile.ZipFile(tmp_path / "dup.zip", "w") as bundle,
    ):
        bundle.writestr("model/latest", b"1")
        bundle.writestr("model/latest", b"2")
    with pytest.raises(CheckpointError, match="appears twice"):
        _extract(tmp_path, (tmp_path / "dup.zip").read_bytes())
    assert list((tmp_path / "home").iterdir()) == []


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_corrupted_member_fails_its_crc_and_nothing_is_kept(tmp_path, compression):
    source = tmp_path / "src"
    source.mkdir()
    (source / "latest").write_text("1")
    (source / "weights.bin").write_bytes(bytes(range(256)) * 400)
    archive = tmp_path / "clean.zip"
    with zipfile.ZipFile(archive, "w", compression) as bundle:
        for path in sorted(source.iterdir()):
            bundle.write(path, f"model/{path.name}")
    data = archive.read_bytes()
    with pytest.raises(CheckpointError, match=r"member 'model/weights\.bin' is corrupted"):
        _extract(tmp_path, corrupt(data, data.index(b"weights.bin") + 200))
    assert list((tmp_path / "home").iterdir()) == []


def test_truncated_archive_is_not_a_readable_zip(tmp_path):
    data = zip_directory(GOLDEN_SAT, "model")
    with pytest.raises(CheckpointError, match="not a readable zip archive"):
        _extract(tmp_path, data[: len(data) // 2])
    assert list((tmp_path / "home").iterdir()) == []


def test_archive_without_a_loadable_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="model_config.json: file not found"):
        _extract(tmp_path, zip_with_members({"model/latest": b"1"}))
    assert list((tmp_path / "home").iterdir()) == []


def test_extracted_directory_gets_the_umask_mode_not_the_staging_0700(tmp_path):
    target, _ = _extract(tmp_path, zip_directory(GOLDEN_SAT, "model"))
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (["model/a", "model/a/b"], r"member 'model/a' is a file, but other members need a to be a folder"),
        (["model/a/b", "model/a"], r"member 'model/a' is a file, but other members need a to be a folder"),
        (["model/a/", "model/a"], r"member 'model/a' is a file, but other members need a to be a folder"),
        (["model/Latest", "model/latest"], r"members 'Latest' and 'latest' differ only in case"),
        (["model/W/x", "model/w/y"], r"members 'W' and 'w' differ only in case"),
    ],
    ids=["file-then-folder", "folder-then-file", "folder-entry", "case-files", "case-folders"],
)
def test_members_that_collide_are_refused_and_nothing_is_written(tmp_path, names, reason):
    with pytest.raises(CheckpointError, match=reason):
        _extract(tmp_path, zip_with_members({name: b"" if name.endswith("/") else b"1" for name in names}))
    assert list((tmp_path / "home").iterdir()) == []


def _deflated(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def test_honest_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    unpacked = UNPACK_ALLOWANCE_BYTES + (4 << 20)
    data = _deflated({"model/latest": b"1", "model/zeros.bin": bytes(unpacked)})
    assert len(data) * MAX_UNPACK_RATIO < 1 << 20  # deflate shrinks zeros ~1000x
    with pytest.raises(CheckpointError, match=rf"unpack to {unpacked + 1} bytes, more than the .* zip bomb"):
        _extract(tmp_path, data)
    assert list((tmp_path / "home").iterdir()) == []


def test_unpacked_size_may_be_bounded_by_the_caller(tmp_path):
    archive = tmp_path / "model.zip"
    archive.write_bytes(zip_directory(GOLDEN_SAT, "model"))
    golden_bytes = sum(p.stat().st_size for p in GOLDEN_SAT.rglob("*") if p.is_file())
    with pytest.raises(
        CheckpointError, match=rf"unpack to {golden_bytes} bytes, more than the {golden_bytes - 1}"
    ):
        extract_checkpoint_archive(
            archive, tmp_path / "home" / "model", "model", max_unpacked=golden_bytes - 1
        )
    assert not (tmp_path / "home").exists() or list((tmp_path / "home").iterdir()) == []
    extract_checkpoint_archive(archive, tmp_path / "home" / "model", "model", max_unpacked=golden_bytes)
    assert (tmp_path / "home" / "model" / "latest").is_file()


def test_archive_with_too_many_members_is_refused(tmp_path):
    members = {f"model/{index}": b"" for index in range(MAX_MEMBERS + 1)}
    with pytest.raises(CheckpointError, match=rf"{MAX_MEMBERS + 1} members, more than the {MAX_MEMBERS}"):
        _extract(tmp_path, zip_with_members(members))
    assert list((tmp_path / "home").iterdir()) == []


def test_sound_archive_that_cannot_be_written_is_an_archive_write_error(tmp_path):
    archive = tmp_path / "model.zip"
    archive.write_bytes(zip_directory(GOLDEN_SAT, "model"))
    (tmp_path / "blocked").write_text("a file where the folder should be")
    with pytest.raises(ArchiveWriteError, match=r"blocked: cannot extract .*model\.zip there"):
        extract_checkpoint_archive(archive, tmp_path / "blocked" / "model", "model")
    assert archive.is_file()
