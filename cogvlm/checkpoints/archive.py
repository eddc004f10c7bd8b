"""Safe extraction of a checkpoint zip: every member is checked before anything is written.

Refused: absolute paths, `..` components, drive letters and backslashes, symbolic links and other special
files, encrypted or duplicated members, a file where another member needs a folder (or names that differ
only in case), anything outside the one top-level folder SAT bundles have, more than `MAX_MEMBERS`
members, and members that unpack to more than `max_unpacked_bytes` (a zip bomb). Extraction goes into a
staging directory that is renamed into place only after every CRC and the caller's check pass, so a bad
archive leaves nothing behind.
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
from cogvlm.utils.progress import byte_bar

_COPY_BYTES = 1 << 20
MAX_MEMBERS = 10_000  # a SAT checkpoint holds a handful of files (config, `latest`, one per rank)
# Checkpoint weights barely compress (the golden bundle unpacks to 1.09x its size); a bomb unpacks to 1000x.
MAX_UNPACK_RATIO = 4
UNPACK_ALLOWANCE_BYTES = 16 << 20  # so that small archives of text (configs) may compress well


class ArchiveWriteError(CheckpointError):
    """The archive is sound, but its members cannot be written here (no space, permissions): keep it."""


def max_unpacked_bytes(archive_bytes: int) -> int:
    """The most a `archive_bytes`-byte archive may unpack to: `MAX_UNPACK_RATIO` times it, plus 16 MiB."""
    return archive_bytes * MAX_UNPACK_RATIO + UNPACK_ALLOWANCE_BYTES


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
    infos = bundle.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CheckpointError(
            f"{archive}: {len(infos)} members, more than the {MAX_MEMBERS} a checkpoint archive may hold"
        )
    members, seen_files = [], set()
    for info in infos:
        relative = _member_path(info, archive, folder)
        if not info.is_dir():
            if relative in seen_files:
                raise CheckpointError(f"{archive}: member {info.filename!r} appears twice")
            seen_files.add(relative)
        members.append((info, relative))
    if not any(not info.is_dir() for info, _ in members):
        raise CheckpointError(f"{archive}: holds no files under {folder}/")
    _check_collisions(members, archive)
    return members


def _check_collisions(members: list[tuple[zipfile.ZipInfo, PurePosixPath]], archive: Path) -> None:
    """A path is a file or a folder, never both; no two paths differ only in case (one on macOS/Windows)."""
    files = {relative: info.filename for info, relative in members if not info.is_dir()}
    folders = {relative for info, relative in members if info.is_dir()}
    folders |= {parent for _, relative in members for parent in relative.parents}
    for relative, name in files.items():
        if relative in folders:
            raise CheckpointError(
                f"{archive}: member {name!r} is a file, but other members need {relative} to be a folder"
            )
    by_case = {}
    for path in sorted(files.keys() | folders):
        other = by_case.setdefault(path.as_posix().casefold(), path)
        if other != path:
            raise CheckpointError(
                f"{archive}: members {other.as_posix()!r} and {path.as_posix()!r} differ only in case"
            )


def _check_unpacked_size(members, archive: Path, limit: int | None) -> int:
    """The bytes the members unpack to (as declared; zipfile stops each member there), within the limit."""
    archive_bytes = archive.stat().st_size
    limit = max_unpacked_bytes(archive_bytes) if limit is None else limit
    total = sum(info.file_size for info, _ in members if not info.is_dir())
    if total > limit:
        raise CheckpointError(
            f"{archive}: its members unpack to {total} bytes, more than the {limit} allowed for a "
            f"{archive_bytes}-byte archive; refusing it as a zip bomb"
        )
    return total


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as error:
        raise CheckpointError(f"{archive}: not a readable zip archive ({error})") from None


def _copy_member(
    bundle: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path, archive: Path, bar
) -> None:
    try:
        with bundle.open(info) as source, open(destination, "xb") as target:
            while chunk := source.read(_COPY_BYTES):
                target.write(chunk)
                bar.update(len(chunk))
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as error:
        # A CRC, header or deflate-stream mismatch: the archive's bytes are corrupted.
        raise CheckpointError(f"{archive}: member {info.filename!r} is corrupted ({error})") from None


def _write_members(bundle: zipfile.ZipFile, members, staging: Path, archive: Path, bar) -> None:
    for info, relative in members:
        destination = staging.joinpath(*relative.parts)
        if info.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        _copy_member(bundle, info, destination, archive, bar)


def extract_checkpoint_archive(
    archive: Path,
    target: Path,
    folder: str,
    check: Callable[[Path], None] | None = None,
    max_unpacked: int | None = None,
    progress: bool = True,
) -> Path:
    """Extract `folder/` of a zip into `target` atomically; `check` inspects the staging directory first.

    `max_unpacked` bounds the bytes the members may unpack to (default: `max_unpacked_bytes` of the
    archive's size). Raises `ArchiveWriteError` when the archive is fine but cannot be written out here.
    With `progress`, a byte bar is drawn on stderr when it is a terminal.
    """
    with _open_zip(archive) as bundle:
        members = checked_members(bundle, archive, folder)
        needed = _check_unpacked_size(members, archive, max_unpacked)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(target.parent).free
            if free < needed:
                raise ArchiveWriteError(
                    f"{target.parent}: extracting {archive} needs {needed} bytes, {free} are free"
                )
            bar = byte_bar(f"extracting {archive.name}", needed, progress)
            with bar, atomic_directory(target) as staging:
                _write_members(bundle, members, staging, archive, bar)
                if check is not None:
                    check(staging)
        except OSError as error:  # the archive passed every check: this is about where it goes
            raise ArchiveWriteError(f"{target.parent}: cannot extract {archive} there ({error})") from None
    return target
