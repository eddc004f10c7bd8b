"""`cogvlm caption` (alias `infer`): answer one query about many images, JSONL out, resumable, multi-rank.

Inputs are a folder, a JSONL of {"image", "query"} or a glob (`caption_inputs`). Records are appended and
flushed as answers come (`caption_records`), so a rerun skips what an interrupted run finished.

Under torchrun the world (global ranks, any number of nodes) is split into tensor-parallel groups of
`tp_size` consecutive ranks; each group is one data-parallel rank that takes every D-th pending input
(D groups in all), runs them through its continuous decode batch (`caption_batch`) and, on the group's
first rank, appends to its own part file. At the end rank 0 merges the parts into the output in input
order. Every rank must see the images and the output's folder (a shared file system across nodes).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
import torch.distributed as dist

from cogvlm.api import ModelSource
from cogvlm.embedded import is_embedded
from cogvlm.frontends.caption_batch import Captioner
from cogvlm.frontends.caption_inputs import CaptionInput, list_inputs
from cogvlm.frontends.caption_records import RecordWriter, done_keys, merge_records, part_path
from cogvlm.inference.settings import GenerationSettings
from cogvlm.launch.distributed import ParallelRuntime, init_parallel_runtime, shutdown

# The embedded model was trained to caption with its own wording; other checkpoints get the usual one.
EMBEDDED_QUERY = "Describe the image."
DEFAULT_QUERY = "Describe this image."


@dataclass(frozen=True)
class CaptionConfig:
    """Everything `cogvlm caption` needs: inputs, output, checkpoint, batching, parallelism, sampling."""

    source: str  # a folder, a .jsonl file or a glob pattern
    output: Path
    model: ModelSource = field(default_factory=ModelSource)
    query: str | None = None  # for inputs without their own; None: the model's default
    batch_size: int = 8
    tp_size: int = 1
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    compiled: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.tp_size < 1:
            raise ValueError(f"--tp_size must be >= 1, got {self.tp_size}")
        if self.query is not None and not self.query.strip():
            raise ValueError("--query must not be empty")
        if self.output.suffix != ".jsonl":
            raise ValueError(f"--output {self.output}: the output is JSONL; name it <something>.jsonl")
        source = Path(self.source)
        if source.is_file() and source.resolve() == Path(self.output).resolve():
            raise ValueError(f"--output {self.output} is the input file: choose another output")


@dataclass(frozen=True)
class CaptionSummary:
    """What a run did: records in the output, how many hold an error, how many inputs this run did, and
    the seconds from every rank's model being loaded to the merged output (`caption_s`) and before."""

    records: int
    errors: int
    done_now: int
    caption_s: float
    load_s: float


def default_query(checkpoint: str) -> str:
    """The query for inputs without one: the embedded model's caption prompt, else the usual one."""
    if is_embedded(checkpoint):
        return EMBEDDED_QUERY
    return DEFAULT_QUERY


def run_caption(config: CaptionConfig, log: TextIO | None = None) -> CaptionSummary | None:
    """Caption every input not yet in `config.output`; rank 0 returns the summary (other ranks None).

    `log` defaults to the `sys.stderr` of the call."""
    log = sys.stderr if log is None else log
    runtime = init_parallel_runtime(config.tp_size)
    try:
        start = time.monotonic()
        inputs, my_slice = _plan(config, runtime)
        session = config.model.load(runtime.device, runtime.tp)
        generation = session.generation_config(config.generation)
        captioner = Captioner(session, generation, batch_size=config.batch_size, compiled=config.compiled)
        _finish(runtime, 0)  # every rank loaded: the captioning time starts together
        loaded = time.monotonic()
        progress = _Progress(len(my_slice), log if runtime.is_first_rank and log.isatty() else None)
        _caption_slice(captioner, my_slice, _writer_path(config.output, runtime), progress)
        pending = _finish(runtime, len(my_slice))
        if not runtime.is_first_rank:
            return None
        records = merge_records(config.output, {item.key: i for i, item in enumerate(inputs)})
        summary = CaptionSummary(
            len(records),
            sum("error" in r for r in records),
            pending,
            time.monotonic() - loaded,
            loaded - start,
        )
        log.write(
            f"{config.output}: {summary.records} records ({summary.errors} with an error); "
            f"{summary.done_now} done by this run in {summary.caption_s:.1f} s "
            f"(after {summary.load_s:.1f} s reading inputs and loading)\n"
        )
        return summary
    finally:
        shutdown(runtime)


def _writer_path(output: Path, runtime: ParallelRuntime) -> Path | None:
    """Where this rank appends: the output itself with one writer, else its part; None off a group's head."""
    if runtime.tp.rank != 0:
        return None
    if runtime.data_parallel_size == 1:
        return output
    return part_path(output, runtime.data_parallel_rank)


def _caption_slice(
    captioner: Captioner, inputs: list[CaptionInput], path: Path | None, progress: _Progress
) -> None:
    # Tensor-parallel ranks after a group's first answer the same inputs and write nothing.
    writer = RecordWriter(path) if path is not None else None
    try:
        write = writer.write if writer is not None else None
        captioner.run(inputs, lambda record: progress.count(write, record))
    finally:
        progress.close()
        if writer is not None:
            writer.close()


class _Progress:
    """On a terminal, one status line of the first rank's inputs, rewritten at most once a second."""

    def __init__(self, total: int, log: TextIO | None) -> None:
        self.total, self.log, self.done = total, log, 0
        self.start = self.shown = time.monotonic()

    def count(self, write, record: dict) -> None:
        """Pass `record` to `write` (if any) and count it."""
        if write is not None:
            write(record)
        self.done += 1
        now = time.monotonic()
        if self.log is not None and (now - self.shown >= 1 or self.done == self.total):
            rate = self.done / max(now - self.start, 1e-9)
            self.log.write(f"\rcaption: {self.done}/{self.total} inputs of this rank, {rate:.2f}/s")
            self.log.flush()
            self.shown = now

    def close(self) -> None:
        """End the status line."""
        if self.log is not None and self.done:
            self.log.write("\n")


def _plan(config: CaptionConfig, runtime: ParallelRuntime) -> tuple[list[CaptionInput], list[CaptionInput]]:
    """All inputs (on rank 0) and this rank's slice of the pending ones.

    Rank 0 lists the inputs, repairs and reads the output and its parts, and sends each rank its
    group's slice, so that the files are read once and every rank agrees; an error is raised on all.
    """
    world = 1 if runtime.control_group is None else dist.get_world_size()
    tp_size, groups = runtime.tp.size, runtime.data_parallel_size
    inputs: list[CaptionInput] = []
    slices: list = [None] * world
    if runtime.control_group is None or dist.get_rank() == 0:
        try:
            inputs = list_inputs(config.source, config.query or default_query(config.model.checkpoint))
            done = done_keys(config.output)
            pending = [item for item in inputs if item.key not in done]
            slices = [pending[(rank // tp_size) :: groups] for rank in range(world)]
        except (ValueError, FileNotFoundError) as error:
            slices = [error] * world
    mine = _scatter(slices, runtime)
    if isinstance(mine, Exception):
        raise mine
    return inputs, mine


def _scatter(slices: list, runtime: ParallelRuntime):
    """Rank 0's `slices[rank]` on each rank (over the control group, which waits as long as listing takes)."""
    if runtime.control_group is None:
        return slices[0]
    received = [None]
    source = slices if dist.get_rank() == 0 else None
    dist.scatter_object_list(received, source, src=0, group=runtime.control_group)
    return received[0]


def _finish(runtime: ParallelRuntime, answered: int) -> int:
    """Wait for every rank; returns the sum of the data-parallel groups' `answered` (each counted once)."""
    if runtime.control_group is None:
        return answered
    total = torch.tensor([answered if runtime.tp.rank == 0 else 0])
    dist.all_reduce(total, group=runtime.control_group)  # also the barrier before rank 0 merges
    return int(total)


__all__ = [
    "CaptionConfig",
    "CaptionSummary",
    "DEFAULT_QUERY",
    "EMBEDDED_QUERY",
    "default_query",
    "run_caption",
]
