"""Checks on user text before any heavy work, shared by the server and the web demo.

Text that no tokenizer can take (lone UTF-16 surrogates), text that would forge image slots (the prompt
marker), and text too long to fit the context are refused with a message naming them; the length check
is a lower bound on the token count, so an overlong prompt is never tokenized in full.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cogvlm.errors import CogVLMError, PromptTooLongError
from cogvlm.text_processors.prompts import IMAGE_MARKER
from cogvlm.text_processors.tokenizer import LlamaTokenizer

_SURROGATE = re.compile("[\ud800-\udfff]")


class UserTextError(CogVLMError, ValueError):
    """A user's text that cannot become a prompt."""


def lone_surrogate(text: str) -> re.Match | None:
    """The first lone UTF-16 surrogate of `text` (JSON's `\\ud800` escapes make them), if any."""
    return _SURROGATE.search(text)


def check_user_text(text: str, where: str) -> None:
    """Refuse a lone surrogate or the reserved image marker in `text`; `where` names it in the message."""
    found = lone_surrogate(text)
    if found is not None:
        raise UserTextError(
            f"{where}: the text holds a lone UTF-16 surrogate (U+{ord(found.group()):04X} at index "
            f"{found.start()}), which is not a Unicode character"
        )
    if IMAGE_MARKER in text:
        # The prompt builder turns this marker into image slots: text must not forge them.
        raise UserTextError(f"{where}: the text contains {IMAGE_MARKER!r}, which is reserved for the image")


def check_prompt_fits(tokenizer: LlamaTokenizer, texts: Sequence[str], max_length: int) -> None:
    """Refuse, before tokenizing, texts that alone need `max_length` tokens or more.

    Encoding costs about a microsecond per character; this costs nothing for texts short enough to fit
    and one linear normalization pass for longer ones.
    """
    if sum(map(len, texts)) < max_length * tokenizer.max_piece_chars:
        return
    minimum = sum(tokenizer.min_token_count(text) for text in texts)
    if minimum >= max_length:
        raise PromptTooLongError(
            f"the conversation's text alone needs at least {minimum} tokens and the context length "
            f"limit is {max_length}: the prompt exceeds the context length limit"
        )
