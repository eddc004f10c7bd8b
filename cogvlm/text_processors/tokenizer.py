"""SentencePiece LLaMA tokenizer that reproduces the slow transformers-4.x `LlamaTokenizer`.

Encoding is plain `SentencePieceProcessor.encode` (dummy prefix kept, no BOS/EOS). The official code calls
`tokenizer.encode(piece, add_special_tokens=False)` on every `<EOI>`-separated piece, which equals plain
sentencepiece except for text that literally contains `<s>`, `</s>` or `<unk>`: transformers turns those
strings into control ids, we encode them as ordinary characters so user text cannot inject control tokens.

Decoding follows transformers 4.57 with `legacy=True` and `add_prefix_space=True` (what the official code
gets, since vicuna's tokenizer_config.json sets neither), see `_join_pieces`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import sentencepiece

from cogvlm.errors import TokenizerError

SPIECE_SPACE = "\u2581"
TOKENIZER_FILE = "tokenizer.model"
DEFAULT_TOKENIZER = "lmsys/vicuna-7b-v1.5"


def without_surrogates(text: str) -> str:
    """`text` with every lone surrogate code point replaced by U+FFFD (unchanged if it has none)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class LlamaTokenizer:
    """LLaMA/vicuna sentencepiece tokenizer with the official (transformers 4.x slow) semantics."""

    def __init__(self, processor: sentencepiece.SentencePieceProcessor, source: str = "<in memory>"):
        self._sp = processor
        self.source = source
        for name, value in (
            ("unk", processor.unk_id()),
            ("bos", processor.bos_id()),
            ("eos", processor.eos_id()),
        ):
            if value < 0:
                raise TokenizerError(
                    f"tokenizer {source}: the model defines no {name} piece; LLaMA needs one"
                )
        # Vicuna has no pad piece; its tokenizer_config.json maps pad to <unk> (id 0), as CogVLM's config does
        # (pad_token_id 0).
        pad = processor.pad_id()
        self._pad_id = pad if pad >= 0 else processor.unk_id()
        self._special_ids = frozenset({self.unk_id, self.bos_id, self.eos_id, self._pad_id})

    @classmethod
    def from_file(cls, path: str | Path) -> LlamaTokenizer:
        """Load a `tokenizer.model` file, or a directory that contains one."""
        path = Path(path)
        model_file = path / TOKENIZER_FILE if path.is_dir() else path
        if not model_file.is_file():
            raise TokenizerError(f"tokenizer model not found: {model_file}")
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.Load(str(model_file))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"tokenizer {model_file}: not a sentencepiece model ({exc})") from exc
        return cls(processor, source=str(model_file))

    @property
    def bos_id(self) -> int:
        """Id of `<s>`."""
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        """Id of `</s>`."""
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        """Id of `<unk>` (also the image placeholder id in CogVLM prompts)."""
        return self._sp.unk_id()

    @property
    def pad_id(self) -> int:
        """Id used for padding: the pad piece if the model has one, else `<unk>`."""
        return self._pad_id

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the model."""
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (sentencepiece with its dummy prefix; no BOS/EOS).

        Lone surrogates (undecodable bytes smuggled in by `surrogateescape`, or `\\ud800` from JSON) cannot
        reach sentencepiece, which raises on them: each becomes U+FFFD, the replacement character.
        """
        return self._sp.encode(without_surrogates(text))

    def min_token_count(self, text: str) -> int:
        """A lower bound on `len(encode(text))`, in linear time and far cheaper than encoding.

        Every token covers at most `max_piece_chars` characters of the normalized text (byte-fallback
        tokens cover less than one); normalizing first makes the bound hold whatever the model's
        normalizer folds (NFKC, runs of whitespace). sentencepiece before 0.2.0 cannot normalize alone:
        there the bound is 0 (still a lower bound; callers then tokenize as before).
        """
        normalize = getattr(self._sp, "normalize", None)
        if normalize is None:
            return 0
        return -(-len(normalize(text)) // self.max_piece_chars)

    @functools.cached_property
    def max_piece_chars(self) -> int:
        """The longest piece of the vocabulary, in characters."""
        return max(len(self._sp.id_to_piece(i)) for i in range(self.vocab_size))

    def piece(self, token_id: int) -> str:
        """The piece string of one id; special ids give `<unk>`, `<s>`, `</s>`."""
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(
                f"tokenizer {self.source}: token id {token_id} is out of range for vocabulary size "
                f"{self.vocab_size}"
            )
        return self._sp.id_to_piece(token_id)

    def piece_id(self, piece: str) -> int:
        """Id of a piece string such as `▁the` or `<0xE2>` (the unk id if it is not in the vocabulary)."""
        return self._sp.piece_to_id(piece)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`, exactly as transformers 4.x slow `LlamaTokenizer.decode` writes it."""
        kept = [int(i) for i in ids]
        if skip_special_tokens:
            kept = [i for i in kept if i not in self._special_ids]
        if not kept:
            return ""
        return self._join_pieces([self.piece(i) for i in kept], [i in self._special_ids for i in kept])

    def _join_pieces(self, pieces: list[str], is_special: list[bool]) -> str:
        """Join pieces the way transformers' `convert_tokens_to_string` does (legacy, add_prefix_space)."""
        # The dummy-prefix space of the first piece is dropped, and sentencepiece then drops the leading
        # space of each run it decodes; so a run that starts with "▁▁" loses both spaces at position 0.
        if pieces[0].startswith(SPIECE_SPACE):
            pieces[0] = pieces[0][1:]
        out: list[str] = []
        run: list[str] = []
        previous_is_special = False
        for index, (piece, special) in enumerate(zip(pieces, is_special, strict=True)):
            if special:
                # Legacy quirk: the space goes *before* the text run that precedes the special token.
                if not previous_is_special and index != 0:
                    out.append(" ")
                out.append(self._sp.decode_pieces(run) + piece)
                run = []
            else:
                if previous_is_special and index == 1 and not piece.startswith(SPIECE_SPACE):
                    out.append(" ")
                run.append(piece)
            previous_is_special = special
        out.append(self._sp.decode_pieces(run))
        return "".join(out)


def hub_cache_dir(hf_home: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache: `hf_home/hub`, else `$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/...`."""
    if hf_home is not None:
        return Path(hf_home) / "hub"
    env = os.environ if environ is None else environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def _snapshot_candidates(repo_dir: Path) -> list[Path]:
    """Snapshot folders to look in: the one `refs/main` names, else all of them, newest first."""
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        return [repo_dir / "snapshots" / ref.read_text().strip()]
    snapshots = repo_dir / "snapshots"
    found = [p for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_tokenizer_path(
    local_tokenizer: str | None, hf_home: Path | None = None, hub_cache: Path | None = None
) -> Path:
    """Find a `tokenizer.model` from a file, a directory, or an HF repo id in the local hub cache.

    Nothing is downloaded (`cogvlm.checkpoints.tokenizer_fetch` fetches what is missing). `None` means the
    official default, `lmsys/vicuna-7b-v1.5`. The cache is `hub_cache`, else `hub_cache_dir(hf_home)`.

    Raises:
        TokenizerError: nothing usable was found; the message lists every path tried.
    """
    name = DEFAULT_TOKENIZER if local_tokenizer is None else local_tokenizer
    local = Path(name).expanduser()
    tried: list[Path] = [local]
    if local.is_file():
        return local
    if local.is_dir():
        if (local / TOKENIZER_FILE).is_file():
            return local / TOKENIZER_FILE
        tried.append(local / TOKENIZER_FILE)
    elif looks_like_repo_id(name):
        cache = hub_cache if hub_cache is not None else hub_cache_dir(hf_home)
        repo_dir = cache / ("models--" + name.replace("/", "--"))
        for snapshot in _snapshot_candidates(repo_dir):
            candidate = snapshot / TOKENIZER_FILE
            if candidate.is_file():
                return candidate
            tried.append(candidate)
        if len(tried) == 1:
            tried.append(repo_dir / "snapshots" / "*" / TOKENIZER_FILE)
    listing = ", ".join(str(p) for p in tried)
    raise TokenizerError(f"tokenizer {name!r} not found (nothing is downloaded); tried: {listing}")


def looks_like_repo_id(name: str) -> bool:
    """Whether `name` has the `owner/name` shape of a Hugging Face repo id (and no `.model` file name)."""
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not name.startswith((".", "~"))
        and not name.endswith(".model")
        and not Path(name).expanduser().exists()
    )


def load_tokenizer(local_tokenizer: str | None, hf_home: Path | None = None) -> LlamaTokenizer:
    """Resolve (see `resolve_tokenizer_path`) and load a tokenizer."""
    return LlamaTokenizer.from_file(resolve_tokenizer_path(local_tokenizer, hf_home))


def find_tokenizer_file(
    checkpoint: Path | None, local_tokenizer: str | None, hub_cache: Path | None = None
) -> Path:
    """An explicit tokenizer, else one stored beside the checkpoint, else vicuna-7b-v1.5 from the HF cache.

    `checkpoint` None: the checkpoint is not on disk yet (only an explicit tokenizer or the default then).
    Nothing is downloaded; raises `TokenizerError` naming every path tried.
    """
    if local_tokenizer is None and checkpoint is not None and (checkpoint / TOKENIZER_FILE).is_file():
        return checkpoint / TOKENIZER_FILE
    return resolve_tokenizer_path(local_tokenizer, hub_cache=hub_cache)


def find_tokenizer(checkpoint: Path | None, local_tokenizer: str | None) -> LlamaTokenizer:
    """Load the tokenizer `find_tokenizer_file` finds (in the local HF cache only)."""
    return LlamaTokenizer.from_file(find_tokenizer_file(checkpoint, local_tokenizer))
