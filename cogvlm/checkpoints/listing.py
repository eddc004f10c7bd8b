"""What `cogvlm list` shows: checkpoints under SAT_HOME, what interrupted runs left there, and the catalog."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cogvlm.checkpoints.catalog import ALIASES, CATALOG, CatalogEntry
from cogvlm.checkpoints.config_fields import MODEL_CONFIG_FILE
from cogvlm.checkpoints.download import DownloadConfig, human_bytes, verified_record
from cogvlm.checkpoints.resolve import DOWNLOAD_DIR, STAGING_INFIX, cached_hf_repo, staging_folders
from cogvlm.embedded import EMBEDDED_NAME, EMBEDDED_SUMMARY, embedded_checkpoint

REPLACED_INFIX = ".old-"  # `atomic_directory` moves a folder it replaces to `.<name>.old-<pid>` until done


@dataclass(frozen=True)
class LocalCheckpoint:
    """A folder or archive under SAT_HOME."""

    name: str
    path: Path
    format: str  # "sat", "hf", "zip" or "unknown"
    size_bytes: int


@dataclass(frozen=True)
class Leftover:
    """Something an interrupted run left under SAT_HOME, and what becomes of it."""

    path: Path
    kind: str
    size_bytes: int
    fate: str


@dataclass(frozen=True)
class CatalogStatus:
    """A catalog entry and where it is available locally (None: not downloaded)."""

    entry: CatalogEntry
    local_path: Path | None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # a dangling link, or a file removed meanwhile
        return 0


def _tree_size(path: Path) -> int:
    """Bytes of the files under `path`; linked files count, linked folders are not entered (no cycles)."""
    if not path.is_dir():
        return _size(path)
    return sum(_size(Path(root) / name) for root, _, files in os.walk(path) for name in files)


def _local_format(path: Path) -> str:
    if path.is_file():
        return "zip"
    if (path / MODEL_CONFIG_FILE).is_file():
        return "sat"
    return "hf" if (path / "config.json").is_file() else "unknown"


def list_local(sat_home: Path) -> list[LocalCheckpoint]:
    """Checkpoint folders and archives under SAT_HOME (hidden entries, such as partial downloads, skipped)."""
    if not sat_home.is_dir():
        return []
    found = []
    for path in sorted(sat_home.iterdir()):
        if path.name.startswith(".") or not (path.is_dir() or path.suffix == ".zip"):
            continue
        found.append(LocalCheckpoint(path.name, path, _local_format(path), _tree_size(path)))
    return found


def list_leftovers(sat_home: Path) -> list[Leftover]:
    """Partial downloads, verified archives not yet extracted, and staging folders under SAT_HOME."""
    if not sat_home.is_dir():
        return []
    downloads = sat_home / DOWNLOAD_DIR
    found = [
        Leftover(path, "partial download", _size(path), "resumed by the next download of it")
        for path in sorted(downloads.glob("*.part"))
    ]
    for path in sorted(downloads.glob("*.zip")):
        if verified_record(path) is None:
            found.append(Leftover(path, "unverified archive", _size(path), "replaced by the next download"))
        else:
            fate = "extracted by the next run, without downloading it again"
            found.append(Leftover(path, "verified archive", _size(path), fate))
    for path in staging_folders(sat_home):
        name = path.name[1 : path.name.rindex(STAGING_INFIX)]
        fate = f"an interrupted extraction or conversion; the next download of {name} removes it"
        found.append(Leftover(path, "staging folder", _tree_size(path), fate))
    for path in sorted(sat_home.glob(f".*{REPLACED_INFIX}*")):
        fate = "an interrupted replacement; delete it once no cogvlm command runs"
        found.append(Leftover(path, "replaced folder", _tree_size(path), fate))
    return found


def catalog_status(config: DownloadConfig) -> list[CatalogStatus]:
    """Every catalog entry with its local copy: the SAT_HOME folder, else (HF entries) the HF cache."""
    statuses = []
    for entry in CATALOG:
        local = config.sat_home / entry.name
        if not local.is_dir():
            local = cached_hf_repo(entry, config) if entry.format == "hf" else None
        statuses.append(CatalogStatus(entry, local))
    return statuses


def listing_as_dict(config: DownloadConfig) -> dict:
    """The listing as plain JSON-ready data."""
    embedded = embedded_checkpoint()
    return {
        "embedded": {
            "name": EMBEDDED_NAME,
            "path": str(embedded),
            "format": "sat",
            "size_bytes": _tree_size(embedded),
            "description": f"the default when no model is named: {EMBEDDED_SUMMARY}",
        },
        "sat_home": str(config.sat_home),
        "local": [
            {"name": c.name, "path": str(c.path), "format": c.format, "size_bytes": c.size_bytes}
            for c in list_local(config.sat_home)
        ],
        "leftovers": [
            {"path": str(item.path), "kind": item.kind, "size_bytes": item.size_bytes, "fate": item.fate}
            for item in list_leftovers(config.sat_home)
        ],
        "catalog": [
            {
                "name": s.entry.name,
                "format": s.entry.format,
                "source": s.entry.source,
                "model_class": s.entry.model_class,
                "resolution": s.entry.resolution,
                "description": s.entry.description,
                "local_path": None if s.local_path is None else str(s.local_path),
            }
            for s in catalog_status(config)
        ],
        "aliases": dict(ALIASES),
    }


def render_listing(config: DownloadConfig, as_json: bool = False) -> str:
    """The text `cogvlm list` prints: local checkpoints with format and size, then the catalog."""
    data = listing_as_dict(config)
    if as_json:
        return json.dumps(data, indent=2)
    lines = [f"Local checkpoints in {data['sat_home']}:"]
    lines += [f"  {c['name']:<40} {c['format']:<7} {human_bytes(c['size_bytes']):>10}" for c in data["local"]]
    if not data["local"]:
        lines.append("  (none)")
    if data["leftovers"]:
        lines += ["", "Left by interrupted runs:"]
        for item in data["leftovers"]:
            where = os.path.relpath(item["path"], data["sat_home"])
            size = human_bytes(item["size_bytes"])
            lines.append(f"  {where:<48} {item['kind']:<18} {size:>10}  {item['fate']}")
    embedded = data["embedded"]
    lines += ["", "Shipped inside the package:"]
    lines.append(f"  {embedded['name']:<40} {'sat':<7} {human_bytes(embedded['size_bytes']):>10}")
    lines += [f"  {embedded['description']}", "", "Catalog (downloadable):"]
    for item in data["catalog"]:
        where = "not downloaded" if item["local_path"] is None else f"downloaded: {item['local_path']}"
        lines.append(f"  {item['name']:<34} {item['format']:<3} {item['source']:<56} {where}")
    lines += ["", "Aliases: " + ", ".join(f"{alias} -> {name}" for alias, name in data["aliases"].items())]
    return "\n".join(lines)
