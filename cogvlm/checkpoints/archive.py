"""Safe extraction of a checkpoint zip: every member is checked before anything is written.

Refused: absolute paths, `..` components, drive letters and backslashes, symbolic links and other special
files, encrypted or duplicated members, and anything outside the one top-level folder SAT bundles have.
Extraction goes into a staging directory that is renamed into place only after every CRC and the caller's
check pass, so a bad archive leaves nothing behind.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from cogvlm.errors import CheckpointError
from cogvlm.utils.atomic import atomic_directory

_COPY_BYTES = 1 << 20


def _member_path(info: zipfile.ZipInfo, archive: Path, folder: str) -> PurePosixPath:
    """The member's path relative to `folder/`, or an error saying why it is refused."""
    name = info.filename
    refuse = f"{archive}: refusing member {name!r}"
    if "\\" in name or name.startswith("/") or (":" in name.split("/")[0]):
        raise CheckpointError(f"{refuse}: absolute path or drive letter")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise CheckpointError(f"{refuse}: '..' would escape the target directory")
    file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded no Unix type
    if file_type == stat.S_IFLNK:
        raise CheckpointError(f"{refuse}: symbolic links are not allowed")
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise CheckpointError(f"{refuse}: not a regular file or directory (type {oct(file_type)})")
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{refuse}: encrypted")
    if not path.parts or path.parts[0] != folder:
        raise CheckpointError(
            f"{refuse}: it is outside the top-level folder {folder!r}/ the archive must have"
        )
    if len(path.parts) == 1 and not info.is_dir():
        raise CheckpointError(f"{refuse}: a file where the top-level folder {folder!r}/ should be")
    return PurePosixPath(*path.parts[1:]) if len(path.parts) > 1 else PurePosixPath()


def checked_members(
    bundle: zipfile.ZipFile, archive: Path, folder: str
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every member with its path under `folder/`, after all the safety checks."""
    members, seen = [], set()
    for info in bundle.infolist():
        relative = _member_path(info, archive, folder)
        if relative in seen and not info.is_dir():
            raise CheckpointError(f"{archive}: member {info.filename!r} appears twice")
        seen.add(relative)
        members.append((info, relative))
    if not any(not info.is_dir() for info, _ in members):
        raise CheckpointError(f"{archive}: holds no files under {folder}/")
    return members


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as error:
        raise CheckpointError(f"{archive}: not a readable zip archive ({error})") from None


def _copy_member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path, archive: Path) -> None:
    try:
        with bundle.open(info) as source, open(destination, "xb") as target:
            shutil.copyfileobj(source, target, _COPY_BYTES)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as error:
        # A CRC, header or deflate-stream mismatch: the archive's bytes are corrupted.
        raise CheckpointError(f"{archive}: member {info.filename!r} is corrupted ({error})") from None


def extract_checkpoint_archive(
    archive: Path, target: Path, folder: str, check: Callable[[Path], None] | None = None
) -> Path:
    """Extract `folder/` of a zip into `target` atomically; `check` inspects the staging directory first."""
    with _open_zip(archive) as bundle:
        members = checked_members(bundle, archive, folder)
        needed = sum(info.file_size for info, _ in members)
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
        if free < needed:
            raise CheckpointError(
                f"{target.parent}: extracting {archive} needs {needed} bytes, {free} are free"
            )
        with atomic_directory(target) as staging:
            for info, relative in members:
                destination = staging.joinpath(*relative.parts)
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                _copy_member(bundle, info, destination, archive)
            if check is not None:
                check(staging)
    return target
