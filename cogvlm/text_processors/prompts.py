"""Prompt templates of the official CogVLM/CogAgent code (`--version`), and response extraction.

`<EOI>` marks where the image goes; it is always at the start. A history is a sequence of
`(query, response)` pairs, oldest first. `base` and `vqa` ignore the history, as the official code does.
The HF port's remote code writes some of them differently (`build_hf_prompt`); `PromptFormat` picks either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast, get_args

IMAGE_MARKER = "<EOI>"
END_OF_TEXT = "</s>"

PromptVersion = Literal["base", "chat", "chat_old", "vqa"]
PROMPT_VERSIONS: tuple[PromptVersion, ...] = get_args(PromptVersion)

History = Sequence[tuple[str, str]] | Sequence[Sequence[str]]

_SEPARATORS: dict[PromptVersion, str] = {
    "base": "<unk>",  # the image placeholders decode to <unk>, so a base reply echoes the query
    "chat": "[/INST]",
    "chat_old": " Answer:",
    "vqa": " Short answer:",
}


def check_version(version: str) -> PromptVersion:
    """Return `version` as a `PromptVersion`, or raise a ValueError that lists the valid names."""
    if version not in PROMPT_VERSIONS:
        valid = ", ".join(PROMPT_VERSIONS)
        raise ValueError(f"unknown prompt version {version!r}; expected one of: {valid}")
    return cast(PromptVersion, version)


def _turns(history: History) -> list[tuple[str, str]]:
    """History as a list of (query, response) pairs, checking each has two strings."""
    turns = []
    for index, turn in enumerate(history):
        if len(turn) != 2 or not all(isinstance(part, str) for part in turn):
            raise ValueError(
                f"history turn {index} must be a (query, response) pair of strings, got {turn!r}"
            )
        turns.append((turn[0], turn[1]))
    return turns


def _chat(query: str, turns: list[tuple[str, str]]) -> str:
    """LLaMA-2 style `[INST]` template (ends with a space, which becomes its own token)."""
    past = "".join(f"{q} [/INST] {r} [INST] " for q, r in turns)
    return f"{IMAGE_MARKER} [INST] {past}{query} [/INST] "


def _chat_old(query: str, turns: list[tuple[str, str]]) -> str:
    """Question/Answer template."""
    past = "".join(f"{q} Answer: {r}\nQuestion: " for q, r in turns)
    return f"{IMAGE_MARKER}Question: {past}{query} Answer:"


def build_prompt(version: str, query: str, history: History = (), has_image: bool = True) -> str:
    """The official prompt for `query` after `history`; without an image the `<EOI>` marker is left out."""
    name = check_version(version)
    turns = _turns(history)
    if name == "base":
        prompt = IMAGE_MARKER + query
    elif name == "chat":
        prompt = _chat(query, turns)
    elif name == "chat_old":
        prompt = _chat_old(query, turns)
    else:
        prompt = f"{IMAGE_MARKER}Question: {query} Short answer:"
    return prompt if has_image else prompt.removeprefix(IMAGE_MARKER)


def response_separator(version: str) -> str:
    """The string after whose last occurrence the model's reply starts."""
    return _SEPARATORS[check_version(version)]


def extract_response(decoded_text: str, version: str) -> str:
    """The reply in a decoded full sequence: drop `</s>`, keep the text after the last separator, strip."""
    text = decoded_text.replace(END_OF_TEXT, "")
    return text.split(response_separator(version))[-1].strip()


HfModelFamily = Literal["cogvlm", "cogagent"]
PromptStyle = Literal["sat", "hf"]
PROMPT_STYLES: tuple[PromptStyle, ...] = get_args(PromptStyle)
_HF_KEEPS_MARKER = ("vqa", "chat_old")  # HF CogAgent templates whose text still starts with `<EOI>`
# HF CogVLM's template_version -> the SAT version it follows; it has none for SAT's [INST] "chat".
_HF_COGVLM_TEMPLATES: dict[str, PromptVersion] = {"base": "base", "chat": "chat_old", "vqa": "vqa"}


def sat_version_for_hf_template(family: HfModelFamily, template_version: str) -> PromptVersion:
    """The SAT prompt version whose template a Hugging Face `template_version` of that family follows.

    HF CogAgent uses the SAT names. HF CogVLM renames them: its "chat" is the Question/Answer format, SAT
    `chat_old`; "base" and "vqa" keep their names. The texts still differ in places (see `build_hf_prompt`).
    """
    if family == "cogagent":
        return check_version(template_version)
    if family != "cogvlm":
        raise ValueError(f"unknown HF model family {family!r}; expected 'cogvlm' or 'cogagent'")
    if template_version not in _HF_COGVLM_TEMPLATES:
        known = ", ".join(_HF_COGVLM_TEMPLATES)
        raise ValueError(f"unknown HF CogVLM template_version {template_version!r}; expected one of: {known}")
    return _HF_COGVLM_TEMPLATES[template_version]


def hf_template_for_version(family: HfModelFamily, version: str) -> str:
    """The HF port's `template_version` for our (SAT) prompt version; an error where the port has none."""
    name = check_version(version)
    if family == "cogagent":
        return name
    if family != "cogvlm":
        raise ValueError(f"unknown HF model family {family!r}; expected 'cogvlm' or 'cogagent'")
    found = [template for template, ours in _HF_COGVLM_TEMPLATES.items() if ours == name]
    if not found:
        raise ValueError(
            "prompt style 'hf': the HF CogVLM port has no [INST] template (SAT version 'chat'); its "
            "templates are base, vqa and chat (= SAT chat_old): use --version chat_old, or --prompt_style sat"
        )
    return found[0]


def build_hf_prompt(family: HfModelFamily, template_version: str, query: str, history: History = ()) -> str:
    """The text the HF remote code encodes after BOS and the image tokens, for its `template_version`.

    It differs from the SAT prompt (without its `<EOI>` marker) in two cases. HF CogAgent's `vqa` and
    `chat_old` templates keep SAT's leading `<EOI>`, which HF encodes as ordinary text (more tokens than
    the SAT prompt has; encode it with `build_hf_inference_inputs`, never as an image marker). HF CogVLM's
    `vqa` keeps the history (`Question: q Short answer: r\n` per turn), which SAT's vqa drops. Otherwise
    the text is the SAT prompt's after its marker: CogAgent's base and chat, and CogVLM's base and chat
    (= SAT chat_old).
    """
    version = sat_version_for_hf_template(family, template_version)
    turns = _turns(history)
    if family == "cogvlm" and version == "vqa":
        past = "".join(f"Question: {q} Short answer: {r}\n" for q, r in turns)
        return f"{past}Question: {query} Short answer:"
    text = build_prompt(version, query, turns, has_image=False)
    return IMAGE_MARKER + text if family == "cogagent" and version in _HF_KEEPS_MARKER else text


def check_style(style: str) -> PromptStyle:
    """Return `style` as a `PromptStyle`, or raise a ValueError that lists the valid names."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of: {', '.join(PROMPT_STYLES)}")
    return cast(PromptStyle, style)


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are written: our (SAT) `version`, the `style` (SAT's texts, or the HF port's), and
    which HF port's texts (`family`) the hf style follows."""

    version: str = "chat"
    style: str = "sat"
    family: HfModelFamily = "cogvlm"

    def __post_init__(self) -> None:
        check_version(self.version)
        if check_style(self.style) == "hf":
            hf_template_for_version(self.family, self.version)  # raises where the port has no such template

    def text(self, query: str, history: History = (), has_image: bool = True) -> str:
        """SAT style: the prompt with its `<EOI>` image marker. HF style: the text encoded after the image
        tokens (a `<EOI>` in it is literal text)."""
        if self.style == "sat":
            return build_prompt(self.version, query, history, has_image)
        template = hf_template_for_version(self.family, self.version)
        return build_hf_prompt(self.family, template, query, history)
