"""The `cogvlm` command parses its arguments, and lists checkpoints, without importing torch (about a second
and a half)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code`."""
    script = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_building_the_parser_of_every_subcommand_does_not_import_torch():
    modules = _modules_after("from cogvlm.cli import build_parser\nbuild_parser().parse_args(['list'])")
    assert "cogvlm.cli.synthetic" in modules  # every subcommand's module was read
    assert "torch" not in modules


def test_listing_the_checkpoints_does_not_import_torch(tmp_path):
    code = (
        "import contextlib, io\nfrom cogvlm.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['list', '--sat_home', {str(tmp_path)!r}]) == 0"
    )
    modules = _modules_after(code)
    assert "cogvlm.checkpoints.listing" in modules
    assert "torch" not in modules


def test_help_prints_every_subcommand():
    result = subprocess.run(
        [sys.executable, "-m", "cogvlm.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("chat", "bench", "serve", "finetune", "eval-synthetic"):
        assert command in result.stdout


@pytest.mark.parametrize("name", ["CogVLM", "load"])
def test_the_package_api_is_imported_on_first_use(name):
    modules = _modules_after(f"import cogvlm\nassert 'torch' not in sys.modules\ncogvlm.{name}")
    assert "cogvlm.api" in modules


def test_text_processors_load_their_names_on_use():
    import cogvlm.text_processors as text_processors

    for name in text_processors.__all__:
        assert getattr(text_processors, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        text_processors.no_such_name  # noqa: B018
