"""Write tests/text_processors/data/prompt_styles.json: the token ids of SAT- and HF-style prompts.

The fixture is made without cogvlm's prompt code, so it can check it:
* the texts are transcribed here from SPEC §4.1 (the SAT table; "HF equivalents": CogAgent's templates
  without the leading `<EOI>`, CogVLM's base / vqa with history / chat = SAT chat_old) and issue 17 (HF
  CogAgent's vqa and chat_old keep SAT's `<EOI>` in the text, which HF encodes as ordinary text);
* the ids follow SPEC §4.2: SAT [BOS] + enc(text before `<EOI>`) + (image_length + 2) zeros + enc(text
  after it); HF [BOS] + (image_length + 2) pad ids (0 for vicuna, whose pad is `<unk>`) + enc(whole text);
  each piece is encoded alone by sentencepiece (`encode`, dummy prefix, no BOS/EOS), never transformers.
The pieces of every encoded segment are written beside the ids so that a reader can check them by eye.
The tokenizer is the embedded model's (shipped in the package); the fixture records its SHA-256.

    PYTHONPATH=. python3 tools/make_prompt_style_fixtures.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import sentencepiece

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = Path("cogvlm/embedded/model/tokenizer.model")
FIXTURE = Path("tests/text_processors/data/prompt_styles.json")
IMAGE_LENGTH = 16  # the tiny presets' (tiny-cogvlm, tiny-cogagent), so a session test can use the ids
MARKER = "<EOI>"
QUERY = "How many shapes are there?"
HISTORIES = {
    "0turns": [],
    "1turn": [["What colour is the circle?", "Red."]],
    "2turns": [["What colour is the circle?", "Red."], ["And the square?", "Blue, at [[120,300,450,700]]."]],
}


def sat_text(version: str, query: str, history: list[list[str]]) -> str:
    """SPEC §4.1's table."""
    if version == "base":
        return MARKER + query
    if version == "chat":
        past = "".join(q + " [/INST] " + r + " [INST] " for q, r in history)
        return MARKER + " [INST] " + past + query + " [/INST] "
    if version == "vqa":
        return MARKER + "Question: " + query + " Short answer:"
    past = "".join(q + " Answer: " + r + "\nQuestion: " for q, r in history)
    return MARKER + "Question: " + past + query + " Answer:"


def hf_text(family: str, version: str, query: str, history: list[list[str]]) -> tuple[str, str] | None:
    """(HF template_version, text after the image tokens) for our `version`; None where HF has none."""
    if family == "cogagent":
        text = sat_text(version, query, history)
        return version, text if version in ("vqa", "chat_old") else text.removeprefix(MARKER)
    if version == "chat":
        return None  # HF CogVLM has no [INST] template
    if version == "vqa":
        past = "".join("Question: " + q + " Short answer: " + r + "\n" for q, r in history)
        return "vqa", past + "Question: " + query + " Short answer:"
    template = "chat" if version == "chat_old" else version
    return template, sat_text(version, query, history).removeprefix(MARKER)


def encoded(processor, text: str) -> dict:
    """One segment: its text, ids and pieces."""
    return {"text": text, "ids": processor.encode(text), "pieces": processor.encode(text, out_type=str)}


def sat_entry(processor, text: str, has_image: bool) -> dict:
    slots = [0] * (IMAGE_LENGTH + 2)
    if not has_image:
        text = text.removeprefix(MARKER)
        segments = [encoded(processor, text)]
        return {"text": text, "segments": segments, "input_ids": [processor.bos_id(), *segments[0]["ids"]]}
    before, after = text.split(MARKER)
    segments = [encoded(processor, before), encoded(processor, after)]
    ids = [processor.bos_id(), *segments[0]["ids"], *slots, *segments[1]["ids"]]
    return {"text": text, "segments": segments, "input_ids": ids}


def hf_entry(processor, found: tuple[str, str] | None, has_image: bool) -> dict | None:
    if found is None:
        return None
    template, text = found
    segment = encoded(processor, text)
    slots = [0] * (IMAGE_LENGTH + 2) if has_image else []
    ids = [processor.bos_id(), *slots, *segment["ids"]]
    return {"template_version": template, "text": text, "segments": [segment], "input_ids": ids}


def build_fixture() -> dict:
    """The fixture's content."""
    processor = sentencepiece.SentencePieceProcessor(model_file=str(ROOT / TOKENIZER))
    cases = []
    for family in ("cogvlm", "cogagent"):
        for version in ("base", "chat", "chat_old", "vqa"):
            for name, history in HISTORIES.items():
                # HF CogAgent cannot run text-only prompts (SPEC §17), so only CogVLM has text-only cases.
                for has_image in (True, False) if family == "cogvlm" else (True,):
                    sat = sat_text(version, QUERY, history)
                    cases.append(
                        {
                            "name": f"{family}-{version}-{name}-{'image' if has_image else 'text'}",
                            "family": family,
                            "version": version,
                            "query": QUERY,
                            "history": history,
                            "has_image": has_image,
                            "sat": sat_entry(processor, sat, has_image),
                            "hf": hf_entry(processor, hf_text(family, version, QUERY, history), has_image),
                        }
                    )
    digest = hashlib.sha256((ROOT / TOKENIZER).read_bytes()).hexdigest()
    return {
        "made_by": "tools/make_prompt_style_fixtures.py",
        "tokenizer": TOKENIZER.as_posix(),
        "tokenizer_sha256": digest,
        "image_length": IMAGE_LENGTH,
        "cases": cases,
    }


def dump(value, indent: str = "") -> str:
    """JSON with one key per line and lists of numbers or strings on one line (readable, diffable)."""
    inner = indent + " "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {dump(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + dump(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)


def main() -> int:
    target = ROOT / FIXTURE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dump(build_fixture()) + "\n")
    print(target, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
