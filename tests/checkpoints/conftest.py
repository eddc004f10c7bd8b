"""Fixtures: copies of the golden checkpoints that tests may damage."""

from __future__ import annotations

import shutil

import pytest

from tests.golden import golden_dir


@pytest.fixture
def sat_copy(tmp_path):
    """A writable copy of the golden CogVLM SAT checkpoint."""
    target = tmp_path / "sat"
    shutil.copytree(golden_dir() / "cogvlm" / "sat_checkpoint", target)
    return target
