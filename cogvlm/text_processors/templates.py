"""Prompts for grounding and GUI-agent tasks; template 0 of each kind is the reference's documented form.

Kinds (the reference's list names in brackets):
* `caption2box` [caption2box]: `<expr>` = an object description; the model answers with its boxes.
* `box2caption` [box2caption]: `<objs>` = a box string such as `[[086,540,400,760]]`.
* `caption_with_box` [caption_with_box]: no placeholder; a description with a box per object.
* `box_qa_reasoning` / `box_qa_short` [box_qa_True / box_qa_False]: `<question>`.
* `agent` [en_template_task]: `<TASK>` = a GUI task, written in double quotes. Appending `(with grounding)`
  (no space before it, as the README writes it) makes CogAgent add a `Grounded Operation:` line.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cogvlm.text_processors.grounding import Box, Point, format_boxes
from cogvlm.text_processors.template_data import (
    AGENT_TASK,
    BOX_QA_SHORT,
    BOX_QA_WITH_REASONING,
    BOX_TO_CAPTION,
    CAPTION_TO_BOX,
    CAPTION_WITH_BOX,
)

GROUNDING_SUFFIX = "(with grounding)"
TEMPLATES: dict[str, tuple[str, ...]] = {
    "caption2box": CAPTION_TO_BOX,
    "box2caption": BOX_TO_CAPTION,
    "caption_with_box": CAPTION_WITH_BOX,
    "box_qa_reasoning": BOX_QA_WITH_REASONING,
    "box_qa_short": BOX_QA_SHORT,
    "agent": AGENT_TASK,
}
PLACEHOLDERS: dict[str, str | None] = {
    "caption2box": "<expr>",
    "box2caption": "<objs>",
    "caption_with_box": None,
    "box_qa_reasoning": "<question>",
    "box_qa_short": "<question>",
    "agent": "<TASK>",
}
# The reference quotes the task of agent templates only.
QUOTED_KINDS = frozenset({"agent"})

TaskText = str | Box | Point | Sequence[Box | Point]


def templates(kind: str) -> tuple[str, ...]:
    """The template list of `kind`, or a ValueError naming the valid kinds."""
    try:
        return TEMPLATES[kind]
    except KeyError:
        raise ValueError(f"unknown template kind {kind!r}; expected one of: {', '.join(TEMPLATES)}") from None


def choose_template(kind: str, index: int | None = None, rng: random.Random | int | None = None) -> str:
    """Template `index` of `kind`, or a random one (`rng`: a Random, a seed, or None for fresh entropy)."""
    candidates = templates(kind)
    if index is None:
        generator = rng if isinstance(rng, random.Random) else random.Random(rng)
        return generator.choice(candidates)
    if (
        isinstance(index, bool)
        or not isinstance(index, int)
        or not -len(candidates) <= index < len(candidates)
    ):
        raise ValueError(
            f"template index {index!r} is out of range for {kind!r} ({len(candidates)} templates)"
        )
    return candidates[index]


def _task_text(kind: str, task: TaskText) -> str:
    if isinstance(task, Box | Point) or (not isinstance(task, str) and isinstance(task, Sequence)):
        return format_boxes(task if isinstance(task, Box | Point) else list(task))
    if not isinstance(task, str) or not task.strip():
        raise ValueError(f"template kind {kind!r} needs a non-empty task, got {task!r}")
    task = task.strip()
    return f'"{task.strip(chr(34))}"' if kind in QUOTED_KINDS else task


def build_task_prompt(
    kind: str,
    task: TaskText | None = None,
    *,
    index: int | None = None,
    rng: random.Random | int | None = None,
    with_grounding: bool = False,
) -> str:
    """A query for `task` from a template of `kind` (chosen by `index`, else at random).

    `task` fills the template's placeholder: text, or boxes/points for `box2caption`. Agent tasks are put
    in double quotes. `with_grounding` appends `(with grounding)`.
    """
    template = choose_template(kind, index, rng)
    placeholder = PLACEHOLDERS[kind]
    if placeholder is None:
        if task is not None:
            raise ValueError(f"template kind {kind!r} takes no task, got {task!r}")
        prompt = template
    else:
        if task is None:
            raise ValueError(f"template kind {kind!r} needs a task to replace {placeholder}")
        prompt = template.replace(placeholder, _task_text(kind, task))
    return prompt + GROUNDING_SUFFIX if with_grounding else prompt
