"""Continuous batching: prompts join a running decode batch between steps and leave when they stop.

Every live row advances by one token per `step`, all rows in one forward pass. A joining prompt is
prefilled alone (its own causal pass, as `generate` does) and its keys and values are copied into a free
row of a shared cache, so a row produces what the same prompt gives alone. Each row keeps its own
sampling settings, seed, budget and end tokens; finished rows free their slot at once and the live rows
stay packed at the front of the cache, so a step computes on live rows only.

Rows of one batch either all attend to a cross-attention memory (CogAgent with an image) or none does;
`can_join` says whether a prompt fits now.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch

from cogvlm.errors import ConfigError, PromptTooLongError
from cogvlm.inference.batching import GenerationRequest, collate
from cogvlm.inference.decode_step import compiled_last_logits, last_logits
from cogvlm.inference.generate import (
    GenerationConfig,
    batch_to_device,
    kv_cache_bytes,
    new_kv_cache,
    prefill,
    prompt_tokens_seen,
)
from cogvlm.inference.sampling import sample
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.context import CrossMemory, ForwardContext
from cogvlm.nn.rotary import reserve_rotary_positions
from cogvlm.parallel.collectives import broadcast_from_first_rank


@dataclass(frozen=True)
class RowToken:
    """A row's new token; `finish_reason` ("end_token" or "length") is set on its last one."""

    row_id: int
    token_id: int
    finish_reason: str | None = None


@dataclass
class _Row:
    row_id: int
    config: GenerationConfig
    budget: int  # tokens this row may generate
    produced: int  # tokens generated so far
    next_token: int  # sampled, not yet fed
    next_position: int  # its position id
    column: int  # cache column it will be written to
    generator: torch.Generator | None
    seen: torch.Tensor | None  # bool [1, vocab] for the repetition penalty


class SlotKVCache:
    """Keys and values [layers, slots, heads, max_length, head_dim]; rows `0..n-1` are live.

    During a step every live row writes its one new key at its own column (`columns`, long [n]) and
    attention reads the first `read_length` columns under a mask that hides each row's unwritten ones.
    """

    def __init__(self, model: VisionLanguageModel, slots: int, max_length: int) -> None:
        template = new_kv_cache(model, slots, max_length)
        self.keys, self.values = template.keys, template.values
        self._layer_keys, self._layer_values = self.keys.unbind(0), self.values.unbind(0)
        self.max_length = max_length
        self.columns: torch.Tensor | None = None
        self.read_length = 0
        self._rows: torch.Tensor | None = None

    def begin_step(self, columns: torch.Tensor) -> torch.Tensor:
        """Prepare a step writing at `columns` [n]; returns the attention mask [n, 1, 1, read_length]."""
        self.columns = columns
        self._rows = torch.arange(columns.shape[0], device=columns.device)
        self.read_length = int(columns.max()) + 1
        keys = torch.arange(self.read_length, device=columns.device)
        return (keys[None, :] <= columns[:, None])[:, None, None, :]

    def update(
        self, layer_index: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store each row's new `key`/`value` [n, heads, 1, head_dim]; return the readable columns."""
        keys, values = self._layer_keys[layer_index], self._layer_values[layer_index]
        keys[self._rows, :, self.columns] = key[:, :, 0]
        values[self._rows, :, self.columns] = value[:, :, 0]
        rows = self.columns.shape[0]
        return keys[:rows, :, : self.read_length], values[:rows, :, : self.read_length]

    def advance(self, num_tokens: int) -> None:
        """Columns are per row and kept by the batch; nothing to count here."""

    def place(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put one prefilled row's keys and values [layers, heads, length, head_dim] into `slot`."""
        length = keys.shape[2]
        self.keys[:, slot, :, :length] = keys
        self.values[:, slot, :, :length] = values

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` columns of row `source` into row `target`."""
        self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
        self.values[:, target, :, :length] = self.values[:, source, :, :length]


def _allocate_cache(model: VisionLanguageModel, rows: int, length: int) -> SlotKVCache:
    """The slot cache, or an error that says how much it needed and what to lower."""
    try:
        return SlotKVCache(model, rows, length)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        size = kv_cache_bytes(model, rows, length)
        raise ConfigError(
            f"the decode batch's KV cache ({rows} rows x {length} positions, {size / 2**30:.1f} GiB) does "
            f"not fit in memory; lower the number of rows (--max-active): {error}"
        ) from error


class _CrossSlots:
    """Each live row's cross-attention keys and values, per layer [slots, heads, encoder_seq, head_dim]."""

    def __init__(self, memory: CrossMemory, slots: int) -> None:
        self.buffers = {
            layer: tuple(torch.empty(slots, *kv.shape[1:], dtype=kv.dtype, device=kv.device) for kv in pair)
            for layer, pair in memory.key_values.items()
        }

    def place(self, slot: int, memory: CrossMemory) -> None:
        for layer, (keys, values) in self.buffers.items():
            new_keys, new_values = memory.key_values[layer]
            keys[slot], values[slot] = new_keys[0], new_values[0]

    def move(self, source: int, target: int) -> None:
        for keys, values in self.buffers.values():
            keys[target], values[target] = keys[source], values[source]

    def memory(self, rows: int) -> CrossMemory:
        """A memory whose keys and values are the first `rows` slots'."""
        key_values = {layer: (k[:rows], v[:rows]) for layer, (k, v) in self.buffers.items()}
        return CrossMemory(encoder_outputs=None, key_values=key_values)


class DecodeBatch:
    """Up to `max_rows` generations advanced together, joining and leaving between steps.

    `max_length` bounds each row's prompt plus generated tokens (default: the model's context length);
    the cache holds `max_rows` rows of that length. `compiled` runs the steps through `torch.compile`
    (as `decode_step="compiled"`; the first steps of each batch size family compile).
    """

    def __init__(
        self,
        model: VisionLanguageModel,
        *,
        max_rows: int,
        max_length: int | None = None,
        compiled: bool = False,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.model = model
        self.max_rows = max_rows
        self.max_length = max_length or model.config.llm.max_sequence_length
        self.cache = _allocate_cache(model, max_rows, self.max_length)
        self._cross: _CrossSlots | None = None
        self._rows: list[_Row] = []  # row i lives in cache slot i
        self._cross_live = False
        self._ids = itertools.count()
        self._device = model.transformer.word_embeddings.weight.device
        self._forward = compiled_last_logits() if compiled else last_logits

    @property
    def size(self) -> int:
        """Number of live rows."""
        return len(self._rows)

    @property
    def has_cross_rows(self) -> bool:
        """True while the live rows attend to a cross-attention memory."""
        return bool(self._rows) and self._cross_live

    def can_join(self, request: GenerationRequest) -> bool:
        """True when a row is free and `request` attends to a cross memory exactly when the live rows do."""
        if len(self._rows) >= self.max_rows:
            return False
        return not self._rows or (request.cross_pixel_values is not None) == self._cross_live

    def join(self, request: GenerationRequest, config: GenerationConfig) -> RowToken:
        """Prefill `request`, sample its first token and add it as a row (unless that token ends it)."""
        if not self.can_join(request):
            raise ValueError(
                f"the batch cannot take this prompt now ({len(self._rows)}/{self.max_rows} rows live; "
                "rows with and without a cross image cannot share a batch)"
            )
        if config.decode_step != "eager":
            raise ValueError(
                f"decode_step={config.decode_step!r}: a decode batch chooses its steps itself "
                "(DecodeBatch(compiled=True) for compiled ones); leave decode_step at 'eager'"
            )
        if config.stop_strings:
            raise ValueError(f"stop strings {config.stop_strings!r}: the batch leaves them to its caller")
        batch = batch_to_device(collate([request]), self._device)
        prompt_length = batch.seq_len
        budget = config.new_token_budget(prompt_length)
        if prompt_length >= self.max_length:
            raise PromptTooLongError(
                f"the prompt has {prompt_length} tokens (image slots included) and the decode batch holds "
                f"{self.max_length} per row: the prompt exceeds the context length limit"
            )
        budget = min(budget, self.max_length - prompt_length)
        last_position = int(batch.position_ids[0, -1])
        reserve_rotary_positions(self.model, last_position + budget + 1)
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=self._device).manual_seed(config.seed)
        with torch.inference_mode():
            memory = None
            if batch.cross_pixel_values is not None:
                memory = self.model.encode_cross(batch.cross_pixel_values)
            cache = new_kv_cache(self.model, 1, prompt_length)
            logits = prefill(self.model, batch, cache, memory)
            seen = prompt_tokens_seen(batch, config.sampling, self.model.config.llm.vocab_size)
            token = self._share(self._draw(logits, seen, config, generator))[0]
        row = _Row(
            row_id=next(self._ids),
            config=config,
            budget=budget,
            produced=1,
            next_token=token,
            next_position=last_position + 1,
            column=prompt_length,
            generator=generator,
            seen=seen,
        )
        finish = self._finish_reason(row, token)
        if finish is None:
            slot = len(self._rows)  # live rows fill the first slots
            with torch.inference_mode():
                self.cache.place(slot, cache.keys[:, 0], cache.values[:, 0])
                if memory is not None:
                    if self._cross is None:
                        self._cross = _CrossSlots(memory, self.max_rows)
                    self._cross.place(slot, memory)
            self._cross_live = memory is not None
            self._rows.append(row)
        return RowToken(row.row_id, token, finish)

    def warm_up(self, request: GenerationRequest, config: GenerationConfig, steps: int = 3) -> None:
        """Run `request` as one row, then as two, for a few steps and leave the batch empty again.

        With `compiled`, this compiles the steps of one row and of several rows before real work arrives.
        """
        if self._rows:
            raise ValueError(f"warm up an empty decode batch, not one with {len(self._rows)} live rows")
        config = dataclasses.replace(config, max_new_tokens=steps + 1, end_token_ids=())
        self.join(request, config)
        self.step()  # one row
        if self.max_rows > 1:
            self.join(request, config)
        while self._rows:
            self.step()  # two rows, then the second alone

    def step(self) -> list[RowToken]:
        """Feed every live row its pending token; return each row's next token (rows that end leave)."""
        if not self._rows:
            return []
        rows = self._rows
        with torch.inference_mode():
            tokens = torch.tensor([[row.next_token] for row in rows], device=self._device)
            positions = torch.tensor([[row.next_position] for row in rows], device=self._device)
            columns = torch.tensor([row.column for row in rows], device=self._device)
            mask = self.cache.begin_step(columns)
            ctx = ForwardContext(
                position_ids=positions,
                attention_mask=mask,
                cross_memory=self._cross.memory(len(rows)) if self.has_cross_rows else None,
                kv_cache=self.cache,
            )
            logits = self._forward(self.model, tokens, ctx)
            drawn = []
            for index, row in enumerate(rows):
                if row.seen is not None:
                    row.seen[0, row.next_token] = True
                drawn.append(self._draw(logits[index : index + 1], row.seen, row.config, row.generator))
            tokens = self._share(torch.cat(drawn))  # one device-to-host copy for every row
            results = []
            for row, token in zip(rows, tokens, strict=True):
                row.produced += 1
                row.next_token, row.next_position, row.column = token, row.next_position + 1, row.column + 1
                results.append(RowToken(row.row_id, token, self._finish_reason(row, token)))
        for result in results:
            if result.finish_reason is not None:
                self.leave(result.row_id)
        return results

    def leave(self, row_id: int) -> None:
        """Drop a row (finished, cancelled or stopped by its caller); the last row moves into its slot."""
        index = next((i for i, row in enumerate(self._rows) if row.row_id == row_id), None)
        if index is None:
            return
        last_slot = len(self._rows) - 1
        last = self._rows[last_slot]
        if index != last_slot:
            with torch.inference_mode():
                self.cache.move(last_slot, index, last.column)
                if self.has_cross_rows:
                    self._cross.move(last_slot, index)
            self._rows[index] = last
        self._rows.pop()

    @staticmethod
    def _draw(
        logits: torch.Tensor,
        seen: torch.Tensor | None,
        config: GenerationConfig,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """One row's next token [1], drawn with its own settings and generator."""
        return sample(logits, seen, config.sampling, () if generator is None else (generator,))

    def _share(self, tokens: torch.Tensor) -> list[int]:
        """Every rank continues with rank 0's tokens, as the reference broadcasts them."""
        return broadcast_from_first_rank(tokens, self.model.tp).tolist()

    @staticmethod
    def _finish_reason(row: _Row, token: int) -> str | None:
        if token in row.config.end_token_ids:
            return "end_token"
        if row.produced >= row.budget:
            return "length"
        return None
