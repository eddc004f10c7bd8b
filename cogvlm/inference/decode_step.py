"""One decoding step after the prefill: eager with a growing cache view, or over fixed shapes (CUDA graphs).

`eager` attends to the written part of the KV cache (fewest bytes read; best on CPU). `compiled` is the
eager step through `torch.compile` (dynamic shapes, as the cache view grows): the many small operations of
a layer (norms, rotary, cache writes) fuse into a few kernels, at the price of a compilation (tens of
seconds on a small CPU) the first time a model decodes in a process. `static` keeps every shape fixed: the
token, its position and the cache slot live in preallocated buffers, and attention covers the whole cache
under a mask that opens one slot per step. `cuda_graph` captures that static step once and replays it, so
a step costs one graph launch and no host work or synchronisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch

from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.context import CrossMemory, ForwardContext
from cogvlm.nn.kv_cache import KVCache

DecodeStepKind = Literal["eager", "compiled", "static", "cuda_graph"]
DECODE_STEP_KINDS: tuple[str, ...] = ("eager", "compiled", "static", "cuda_graph")
FIXED_SHAPE_KINDS: tuple[str, ...] = ("static", "cuda_graph")  # attend to the whole cache under a mask
WARMUP_STEPS = 2


def last_logits(model: VisionLanguageModel, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """The float32 logits of each row's last position after one forward pass."""
    return model(input_ids, ctx, last_position_only=True).logits[:, -1].float()  # [batch, vocab]


@functools.cache
def compiled_last_logits() -> Callable[[VisionLanguageModel, torch.Tensor, ForwardContext], torch.Tensor]:
    """`last_logits` through `torch.compile`; compiled code is kept per model and shape family."""
    compiled = torch.compile(last_logits, dynamic=True)

    def forward(model: VisionLanguageModel, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        try:
            return compiled(model, input_ids, ctx)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            raise RuntimeError(
                "the compiled decoding step could not be built (torch.compile needs a C++ compiler such as "
                "g++ on CPU, Triton on CUDA); use decode_step='eager' (--decode_step eager) instead: "
                f"{error}"
            ) from error

    return forward


class EagerDecodeStep:
    """Feeds each token with a fresh context; attention reads the cache up to its current length."""

    def __init__(
        self,
        model: VisionLanguageModel,
        cache: KVCache,
        key_is_valid: torch.Tensor | None,
        memory: CrossMemory | None,
        *,
        compiled: bool = False,
    ) -> None:
        self.model, self.cache, self.key_is_valid, self.memory = model, cache, key_is_valid, memory
        self.forward = compiled_last_logits() if compiled else last_logits

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [batch, vocab] after feeding `tokens` [batch] at `positions` [batch]."""
        end = self.cache.length + 1
        mask = None if self.key_is_valid is None else self.key_is_valid[:, None, None, :end]  # [b, 1, 1, k]
        ctx = ForwardContext(
            position_ids=positions[:, None],
            attention_mask=mask,
            cross_memory=self.memory,
            kv_cache=self.cache,
        )
        return self.forward(self.model, tokens[:, None], ctx)


class StaticDecodeStep:
    """Feeds each token through fixed buffers; optionally captured into a CUDA graph on the first call."""

    def __init__(
        self,
        model: VisionLanguageModel,
        cache: KVCache,
        key_is_valid: torch.Tensor,
        memory: CrossMemory | None,
        *,
        use_cuda_graph: bool,
    ) -> None:
        if use_cuda_graph and cache.keys.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {cache.keys.device}")
        rows, device = key_is_valid.shape[0], key_is_valid.device
        self.model, self.cache, self.memory = model, cache, memory
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.next_slot = cache.length  # the first position after the prefill
        self.mask = key_is_valid[:, None, None, :].clone()  # [batch, 1, 1, max_length]
        self.mask[..., self.next_slot :] = False
        self.use_cuda_graph = use_cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def _forward(self) -> torch.Tensor:
        # A new context per pass: per-pass caches (the rotary lookup) must not outlive it.
        self.cache.write_index = self.slot
        ctx = ForwardContext(
            position_ids=self.positions,
            attention_mask=self.mask,
            cross_memory=self.memory,
            kv_cache=self.cache,
        )
        try:
            return last_logits(self.model, self.tokens, ctx)
        finally:
            self.cache.write_index = None

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [batch, vocab] after feeding `tokens` [batch] at `positions` [batch]."""
        self.tokens.copy_(tokens[:, None])
        self.positions.copy_(positions[:, None])
        self.slot.fill_(self.next_slot)
        self.mask[..., self.next_slot] = True
        self.next_slot += 1
        if not self.use_cuda_graph:
            return self._forward()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits.clone()  # the next replay overwrites the graph's output buffer

    def _capture(self) -> None:
        """Warm up on a side stream (allocator, kernels), then record one step."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._forward()  # writes this step's own slot, which the replay writes again
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()


def build_decode_step(
    kind: str,
    model: VisionLanguageModel,
    cache: KVCache,
    key_is_valid: torch.Tensor | None,
    memory: CrossMemory | None,
) -> EagerDecodeStep | StaticDecodeStep:
    """The decoding step of `kind` for a cache that holds the prefill."""
    if kind in ("eager", "compiled"):
        return EagerDecodeStep(model, cache, key_is_valid, memory, compiled=kind == "compiled")
    if kind not in DECODE_STEP_KINDS:
        raise ValueError(f"decode_step must be one of {DECODE_STEP_KINDS}, got {kind!r}")
    if key_is_valid is None:
        key_is_valid = torch.ones(
            cache.keys.shape[1], cache.max_length, dtype=torch.bool, device=cache.keys.device
        )
    return StaticDecodeStep(model, cache, key_is_valid, memory, use_cuda_graph=kind == "cuda_graph")
