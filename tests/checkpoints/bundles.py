"""Zip archives for the download tests: a checkpoint bundled as SAT publishes it, and hostile archives."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path


def zip_directory(source: Path, folder: str) -> bytes:
    """`source` zipped with the top-level folder `folder/`, as SAT's `<name>.zip` bundles are."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr(zipfile.ZipInfo(f"{folder}/"), b"")
        for path in sorted(source.rglob("*")):
            if path.is_file():
                bundle.write(path, f"{folder}/{path.relative_to(source).as_posix()}")
    return buffer.getvalue()


def zip_with_members(
    members: dict[str, bytes], symlinks: dict[str, str] | None = None, compression: int = zipfile.ZIP_STORED
) -> bytes:
    """A zip holding exactly these members (names are written as given, `..` and `/` included)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as bundle:
        for name, data in members.items():
            bundle.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, target.encode())
    return buffer.getvalue()


def corrupt(data: bytes, at: int) -> bytes:
    """`data` with one byte inverted at offset `at`."""
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
