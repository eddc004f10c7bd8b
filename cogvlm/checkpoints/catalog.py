"""The published checkpoints, written out by hand: name -> where it is downloaded from and in what format.

SAT bundles are `<name>.zip` files holding one top-level folder `<name>/` (the layout SAT's `MODEL_URLS`
registers as `r2://<name>.zip`); the same zips are published in the Hugging Face repositories
`THUDM/CogVLM` and `THUDM/CogAgent`, which is where they are fetched from here. HF-format checkpoints are
whole repositories (`config.json` + safetensors shards). Checksums and sizes of the real files are not
published anywhere we can cite, so `sha256` and `size_bytes` are None for them: downloads are verified
against the SHA-256 and size the Hub sends with every LFS file (`X-Linked-Etag`, `X-Linked-Size`) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cogvlm.errors import ConfigError

CheckpointFormat = Literal["sat", "hf"]
DEFAULT_REVISION = "main"
SAT_COGVLM_REPO = "THUDM/CogVLM"
SAT_COGAGENT_REPO = "THUDM/CogAgent"


@dataclass(frozen=True)
class CatalogEntry:
    """One published checkpoint: its name, format, source repository and (if known) checksum and size."""

    name: str
    format: CheckpointFormat
    repo_id: str
    filename: str | None  # the archive inside `repo_id` (SAT); None: the whole repository (HF)
    model_class: str
    resolution: str  # image side in pixels; CogAgent: low-res EVA + high-res cross tower
    description: str
    revision: str = DEFAULT_REVISION
    sha256: str | None = None  # None: unknown, verified against the server's checksum header instead
    size_bytes: int | None = None  # None: unknown, verified against the server's size header instead

    def __post_init__(self) -> None:
        if self.format not in ("sat", "hf"):
            raise ConfigError(f"CatalogEntry {self.name}: format={self.format!r}, expected 'sat' or 'hf'")
        if (self.format == "sat") != (self.filename is not None):
            raise ConfigError(f"CatalogEntry {self.name}: a SAT entry names an archive, an HF entry does not")
        if self.sha256 is not None and (len(self.sha256) != 64 or not _is_hex(self.sha256)):
            raise ConfigError(f"CatalogEntry {self.name}: sha256={self.sha256!r} is not 64 hex digits")
        if self.size_bytes is not None and (type(self.size_bytes) is not int or self.size_bytes <= 0):
            raise ConfigError(
                f"CatalogEntry {self.name}: size_bytes={self.size_bytes!r} is not a positive int"
            )

    @property
    def source(self) -> str:
        """`repo` for an HF entry, `repo: file` for a SAT archive."""
        return self.repo_id if self.filename is None else f"{self.repo_id}: {self.filename}"


def _is_hex(text: str) -> bool:
    return all(character in "0123456789abcdefABCDEF" for character in text)


def _sat(name: str, repo_id: str, model_class: str, resolution: str, description: str) -> CatalogEntry:
    return CatalogEntry(name, "sat", repo_id, f"{name}.zip", model_class, resolution, description)


def _hf(name: str, model_class: str, resolution: str, description: str) -> CatalogEntry:
    return CatalogEntry(name, "hf", f"THUDM/{name}", None, model_class, resolution, description)


CATALOG: tuple[CatalogEntry, ...] = (
    _sat("cogvlm-base-224", SAT_COGVLM_REPO, "CogVLMModel", "224", "pre-training checkpoint; prompt base"),
    _sat("cogvlm-base-490", SAT_COGVLM_REPO, "CogVLMModel", "490", "base-224, ViT positions at 490; base"),
    _sat("cogvlm-chat-v1.1", SAT_COGVLM_REPO, "CogVLMModel", "490", "chat and VQA (v1.1); chat_old"),
    _sat("cogvlm-grounding-base", SAT_COGVLM_REPO, "CogVLMModel", "490", "grounding; base"),
    _sat(
        "cogvlm-grounding-generalist-v1.1",
        SAT_COGVLM_REPO,
        "CogVLMModel",
        "490",
        "referring expressions, grounded captions (v1.1); base",
    ),
    _sat("cogagent-chat", SAT_COGAGENT_REPO, "CogAgentModel", "224+1120", "chat, GUI agent, grounding; chat"),
    _sat("cogagent-vqa", SAT_COGAGENT_REPO, "CogAgentModel", "224+1120", "single-turn VQA; chat_old"),
    _hf("cogvlm-chat-hf", "CogVLMModel", "490", "cogvlm-chat-v1.1 in HF format"),
    _hf("cogvlm-base-224-hf", "CogVLMModel", "224", "cogvlm-base-224 in HF format"),
    _hf("cogvlm-base-490-hf", "CogVLMModel", "490", "cogvlm-base-490 in HF format"),
    _hf("cogvlm-grounding-base-hf", "CogVLMModel", "490", "cogvlm-grounding-base in HF format"),
    _hf("cogvlm-grounding-generalist-hf", "CogVLMModel", "490", "grounding-generalist v1.1 in HF format"),
    _hf("cogagent-chat-hf", "CogAgentModel", "224+1120", "cogagent-chat in HF format"),
    _hf("cogagent-vqa-hf", "CogAgentModel", "224+1120", "cogagent-vqa in HF format"),
)

# Names the reference's README uses without a download entry: they mean the current version.
ALIASES: dict[str, str] = {
    "cogvlm-chat": "cogvlm-chat-v1.1",
    "cogvlm-grounding-generalist": "cogvlm-grounding-generalist-v1.1",
    "cogvlm-chat-v1.1-hf": "cogvlm-chat-hf",
    "cogvlm-grounding-generalist-v1.1-hf": "cogvlm-grounding-generalist-hf",
}

_BY_NAME = {entry.name: entry for entry in CATALOG}


def canonical_name(name: str) -> str:
    """The catalog name an alias stands for (a name that is not an alias is returned unchanged)."""
    return ALIASES.get(name, name)


def find_entry(name: str) -> CatalogEntry | None:
    """The catalog entry for a name or alias, or None."""
    return _BY_NAME.get(canonical_name(name))


def archive_url(entry: CatalogEntry, endpoint: str) -> str:
    """The URL of a SAT entry's archive under a Hub-compatible endpoint (`<endpoint>/<repo>/resolve/...`)."""
    if entry.filename is None:
        raise ConfigError(f"{entry.name} is an HF repository, not an archive")
    return f"{endpoint.rstrip('/')}/{entry.repo_id}/resolve/{entry.revision}/{entry.filename}"
