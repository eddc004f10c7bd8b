"""Safe extraction: hostile or damaged archives are refused and leave nothing behind."""

from __future__ import annotations

import os
import zipfile

import pytest

from cogvlm.checkpoints.archive import extract_checkpoint_archive
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
