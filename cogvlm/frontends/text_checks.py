"""Checks on user text before any heavy work, shared by the server and the web demo.

Text that no tokenizer can take (lone UTF-16 surrogates), text that would forge image slots (the prompt
marker), and text too long to fit the context are refused with a message naming them; the length check
is a lower bound on the token count, so an overlong prompt is never tokenized in full.
"""

from __future__ import annotations

from collections.abc import Sequence

from cogvlm.errors import PromptTooLongError, UserTextError
from cogvlm.text_processors.inference import check_no_image_marker
from cogvlm.text_processors.tokenizer import LlamaTokenizer

# The most characters one normalization rule writes (NFKC's longest expansion is 18).
PREFIX_SLACK_CHARS = 64


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone UTF-16 surrogate of `text` (JSON's `\\ud800` makes them), if any.

    ASCII text is answered at once; other text by one UTF-8 encoding pass, several times faster than a
    regular-expression scan.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def check_user_text(text: str, where: str) -> None:
    """Refuse a lone surrogate or the reserved image marker in `text`; `where` names it in the message."""
    index = lone_surrogate(text)
    if index is not None:
        raise UserTextError(
            f"{where}: the text holds a lone UTF-16 surrogate (U+{ord(text[index]):04X} at index "
            f"{index}), which is not a Unicode character"
        )
    check_no_image_marker(text, where)


def check_prompt_fits(tokenizer: LlamaTokenizer, texts: Sequence[str], max_length: int) -> None:
    """Refuse, before tokenizing, texts that alone need `max_length` tokens or more.

    Encoding costs about a microsecond per character. This costs nothing for texts short enough to fit;
    a longer text is first bounded from a prefix of twice the context's worth of characters (its cost
    depends on the context, not on the text), and only when that cannot decide, from the whole text.
    """
    limit_chars = max_length * tokenizer.max_piece_chars
    if sum(map(len, texts)) < limit_chars:
        return
    quick = sum(prefix_token_bound(tokenizer, text, 2 * limit_chars) for text in texts)
    minimum = quick if quick >= max_length else sum(tokenizer.min_token_count(text) for text in texts)
    if minimum >= max_length:
        raise PromptTooLongError(
            f"the conversation's text alone needs at least {minimum} tokens and the context length "
            f"limit is {max_length}: the prompt exceeds the context length limit"
        )


def prefix_token_bound(tokenizer: LlamaTokenizer, text: str, prefix_chars: int) -> int:
    """A lower bound on `text`'s tokens from its first `prefix_chars` characters.

    Normalizing a prefix gives at most `PREFIX_SLACK_CHARS` more characters than the same stretch of the
    whole text does (only the rules that match across the cut differ), so the bound subtracts them.
    """
    if len(text) <= prefix_chars:
        return tokenizer.min_token_count(text)
    slack_tokens = -(-PREFIX_SLACK_CHARS // tokenizer.max_piece_chars) + 1
    return max(0, tokenizer.min_token_count(text[:prefix_chars]) - slack_tokens)
