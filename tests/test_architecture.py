"""The package's layering: imports run downward only, so each part can change without its callers' callers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cogvlm"

# (importer prefix, forbidden import prefix, why)
FORBIDDEN = [
    (prefix, "cogvlm.frontends", "front-ends sit on top: nothing below imports them")
    for prefix in (
        "cogvlm.api",
        "cogvlm.inference",
        "cogvlm.models",
        "cogvlm.mixins",
        "cogvlm.nn",
        "cogvlm.parallel",
        "cogvlm.checkpoints",
        "cogvlm.text_processors",
        "cogvlm.image_processors",
        "cogvlm.train",
        "cogvlm.embedded",
        "cogvlm.utils",
    )
] + [
    ("cogvlm.inference", "cogvlm.api", "the engine does not know the session built on it"),
    ("cogvlm.mixins", "cogvlm.models.cogvlm", "mixins are handed their towers; recipes import mixins"),
    ("cogvlm.mixins", "cogvlm.models.cogagent", "mixins are handed their towers; recipes import mixins"),
    ("cogvlm.mixins", "cogvlm.models.eva", "mixins are handed their towers; recipes import mixins"),
    ("cogvlm.mixins", "cogvlm.models.builders", "mixins are handed their towers; recipes import mixins"),
    ("cogvlm.embedded", "cogvlm.train", "the shipped model does not depend on the training code"),
    ("cogvlm.image_processors", "cogvlm.checkpoints", "image code needs no checkpoint code"),
    ("cogvlm.text_processors", "cogvlm.checkpoints", "text code needs no checkpoint code"),
    ("cogvlm.utils", "cogvlm.", "utilities are used by all and use none of the package"),
    ("cogvlm.train", "cogvlm.api", "training loads through checkpoints, not the inference session"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _edges() -> list[tuple[str, str]]:
    return [
        (_module_name(path), imported)
        for path in sorted(PACKAGE.rglob("*.py"))
        for imported in sorted(_imports(path))
        if imported.startswith("cogvlm")
    ]


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


@pytest.mark.parametrize("rule", FORBIDDEN, ids=lambda rule: f"{rule[0]}-x->{rule[1]}")
def test_no_import_runs_upward(rule):
    importer, forbidden, why = rule
    violations = [
        f"{source} imports {target}"
        for source, target in _edges()
        if _matches(source, importer) and _matches(target, forbidden)
    ]
    assert not violations, f"{why}: {violations}"


def test_the_rules_see_the_package():
    sources = {source for source, _ in _edges()}
    assert {"cogvlm.frontends.chat", "cogvlm.api", "cogvlm.mixins.image_embedding"} <= sources
