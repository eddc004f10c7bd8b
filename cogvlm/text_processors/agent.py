"""CogAgent's GUI-agent replies as typed values: the plan, the next action and the grounded operation.

A reply looks like (README example):

    Plan: 1. Type 'CogVLM' into the Google search bar. 2. Review the search results that appear. ...
    Next Action: Move the cursor to the Google search bar, and type 'CogVLM' into it.
    Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]

Web operations read `[<element type>] <element text> -> <ACTION>[: <value>] at the box [[...]]`; phone
operations are shorter (`tap [[780,862]]`). Parsing never raises: missing or garbled parts are None or empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cogvlm.text_processors.grounding import Box, GroundedPhrase, Target, find_box_groups

# "Action:" is the phone-task spelling of "Next Action:".
_SECTION = re.compile(r"\b(Plan|Next Action|Action|Grounded Operation)\s*:", re.IGNORECASE)
_STEP_NUMBER = re.compile(r"(?:^|(?<=\s))\d{1,3}\.\s+")
_WEB_OPERATION = re.compile(r"\s*\[(?P<type>[^\[\]]*)\]\s*(?P<element>.*?)\s*->\s*(?P<rest>.*)", re.DOTALL)
_TARGET_TAIL = re.compile(r"(?:^|\s)(?:at\s+the\s+(?:box|point)|at|on)$", re.IGNORECASE)


@dataclass(frozen=True)
class GroundedOperation:
    """One operation: the action (and its value, e.g. the text to type), the element, and where it is."""

    text: str
    action: str | None = None  # as written: "TYPE", "CLICK", "tap", "SCROLL_DOWN"
    value: str | None = None  # after "ACTION:", e.g. the typed text
    element_type: str | None = None  # "combobox", "button", "link", ...
    element_text: str | None = None  # the element's visible text, e.g. "Search"
    targets: tuple[Target, ...] = ()

    @property
    def action_type(self) -> str | None:
        """The action in upper case with underscores: "TYPE", "TAP", "SCROLL_DOWN"."""
        return None if self.action is None else re.sub(r"\s+", "_", self.action.strip()).upper()

    @property
    def typed_text(self) -> str | None:
        """The text a TYPE action enters (None for other actions)."""
        return self.value if self.action_type == "TYPE" else None

    @property
    def boxes(self) -> tuple[Box, ...]:
        """The boxes among the targets."""
        return tuple(target for target in self.targets if isinstance(target, Box))

    def label(self) -> str:
        """A short caption for drawing: `[combobox] Search -> TYPE: CogVLM`, or the action alone."""
        element = " ".join(
            part
            for part in (f"[{self.element_type}]" if self.element_type else "", self.element_text)
            if part
        )
        action = f"{self.action}: {self.value}" if self.action and self.value else (self.action or "")
        return " -> ".join(part for part in (element, action) if part)


@dataclass(frozen=True)
class AgentReply:
    """A parsed reply; `text` is the whole reply as given."""

    text: str
    plan: str | None = None
    plan_steps: tuple[str, ...] = ()
    next_action: str | None = None
    operation: GroundedOperation | None = None

    def grounded_phrases(self) -> list[GroundedPhrase]:
        """The operation's targets with its label, for drawing (empty without a grounded operation)."""
        if self.operation is None or not self.operation.targets:
            return []
        return [GroundedPhrase(self.operation.label(), self.operation.targets)]


def _sections(text: str) -> dict[str, str]:
    """Section name (lower case) -> its text, up to the next section; the first occurrence of each wins."""
    matches = list(_SECTION.finditer(text))
    sections: dict[str, str] = {}
    ends = [following.start() for following in matches[1:]] + ([len(text)] if matches else [])
    for match, end in zip(matches, ends, strict=True):
        sections.setdefault(match.group(1).lower(), text[match.end() : end].strip())
    return sections


def split_plan_steps(plan: str) -> tuple[str, ...]:
    """`"1. Do a. 2. Do b."` -> `("Do a.", "Do b.")`; a plan without numbers is one step."""
    steps = [step.strip() for step in _STEP_NUMBER.split(plan)]
    return tuple(step for step in steps if step)


def _action_and_value(text: str) -> tuple[str | None, str | None]:
    text = _TARGET_TAIL.sub("", text.strip()).strip()
    if not text:
        return None, None
    action, colon, value = text.partition(":")
    return action.strip() or None, (value.strip() or None) if colon else None


def parse_operation(text: str) -> GroundedOperation:
    """Parse the text after `Grounded Operation:`."""
    groups = find_box_groups(text)
    targets = tuple(target for group in groups for target in group.targets)
    before_targets = text[: groups[0].start] if groups else text
    web = _WEB_OPERATION.match(before_targets) if "->" in before_targets else None
    if web is None:
        action, value = _action_and_value(before_targets)
        return GroundedOperation(text.strip(), action, value, targets=targets)
    action, value = _action_and_value(web.group("rest"))
    return GroundedOperation(
        text.strip(),
        action,
        value,
        element_type=web.group("type").strip() or None,
        element_text=web.group("element").strip() or None,
        targets=targets,
    )


def parse_agent_reply(text: str) -> AgentReply:
    """Split a CogAgent reply into plan, next action and grounded operation (each may be missing)."""
    sections = _sections(text)
    plan = sections.get("plan")
    operation = sections.get("grounded operation")
    return AgentReply(
        text=text,
        plan=plan,
        plan_steps=split_plan_steps(plan) if plan else (),
        next_action=sections.get("next action", sections.get("action")),
        operation=parse_operation(operation) if operation is not None else None,
    )
