"""The catalog: every published name, where it comes from, and the README names that mean a newer one."""

from __future__ import annotations

import pytest

from cogvlm.checkpoints.catalog import (
    ALIASES,
    CATALOG,
    CatalogEntry,
    archive_url,
    canonical_name,
    find_entry,
)
from cogvlm.errors import ConfigError
from cogvlm.models.builders import FAMILIES

SAT_NAMES = {
    "cogvlm-base-224": "THUDM/CogVLM",
    "cogvlm-base-490": "THUDM/CogVLM",
    "cogvlm-chat-v1.1": "THUDM/CogVLM",
    "cogvlm-grounding-base": "THUDM/CogVLM",
    "cogvlm-grounding-generalist-v1.1": "THUDM/CogVLM",
    "cogagent-chat": "THUDM/CogAgent",
    "cogagent-vqa": "THUDM/CogAgent",
}
HF_REPOS = {
    "THUDM/cogvlm-chat-hf",
    "THUDM/cogvlm-base-224-hf",
    "THUDM/cogvlm-base-490-hf",
    "THUDM/cogvlm-grounding-base-hf",
    "THUDM/cogvlm-grounding-generalist-hf",
    "THUDM/cogagent-chat-hf",
    "THUDM/cogagent-vqa-hf",
}


def test_every_published_sat_bundle_is_a_zip_named_after_it_in_its_repository():
    sat = {entry.name: entry for entry in CATALOG if entry.format == "sat"}
    assert {name: entry.repo_id for name, entry in sat.items()} == SAT_NAMES
    assert all(entry.filename == f"{name}.zip" for name, entry in sat.items())


def test_every_published_hf_repository_is_listed_as_a_whole_repository():
    hf = [entry for entry in CATALOG if entry.format == "hf"]
    assert {entry.repo_id for entry in hf} == HF_REPOS
    assert all(entry.filename is None and entry.repo_id == f"THUDM/{entry.name}" for entry in hf)


def test_names_are_unique_and_model_classes_are_known():
    names = [entry.name for entry in CATALOG]
    assert len(names) == len(set(names))
    assert {entry.model_class for entry in CATALOG} <= set(FAMILIES)
    assert {entry.name for entry in CATALOG if entry.name.startswith("cogagent")} == {
        entry.name for entry in CATALOG if entry.model_class == "CogAgentModel"
    }


@pytest.mark.parametrize(
    ("readme_name", "current"),
    [
        ("cogvlm-chat", "cogvlm-chat-v1.1"),
        ("cogvlm-grounding-generalist", "cogvlm-grounding-generalist-v1.1"),
    ],
)
def test_readme_names_missing_from_the_download_table_mean_the_current_version(readme_name, current):
    assert canonical_name(readme_name) == current
    assert find_entry(readme_name) is find_entry(current)


def test_aliases_point_at_entries_and_never_hide_one():
    names = {entry.name for entry in CATALOG}
    assert set(ALIASES.values()) <= names
    assert not set(ALIASES) & names
    assert find_entry("cogvlm-unknown") is None


def test_archive_url_follows_the_hub_layout_under_any_endpoint():
    entry = find_entry("cogagent-chat")
    assert archive_url(entry, "https://huggingface.co") == (
        "https://huggingface.co/THUDM/CogAgent/resolve/main/cogagent-chat.zip"
    )
    assert archive_url(entry, "https://mirror.example/") == (
        "https://mirror.example/THUDM/CogAgent/resolve/main/cogagent-chat.zip"
    )
    with pytest.raises(ConfigError, match="cogvlm-chat-hf is an HF repository, not an archive"):
        archive_url(find_entry("cogvlm-chat-hf"), "https://huggingface.co")


def test_malformed_entries_are_rejected():
    with pytest.raises(ConfigError, match="sha256='xyz' is not 64 hex digits"):
        CatalogEntry("a", "sat", "o/r", "a.zip", "CogVLMModel", "490", "", sha256="xyz")
    with pytest.raises(ConfigError, match="a SAT entry names an archive"):
        CatalogEntry("a", "sat", "o/r", None, "CogVLMModel", "490", "")
    with pytest.raises(ConfigError, match="format='gguf'"):
        CatalogEntry("a", "gguf", "o/r", None, "CogVLMModel", "490", "")


@pytest.mark.parametrize("size", [-5, 0, "12", 1.5, True])
def test_catalog_size_must_be_a_positive_int(size):
    with pytest.raises(ConfigError, match=rf"size_bytes={size!r} is not a positive int"):
        CatalogEntry("a", "sat", "o/r", "a.zip", "CogVLMModel", "490", "", size_bytes=size)
