"""Tensor-parallel serving: rank 0 owns HTTP and the scheduler, every rank runs the same decode batch.

Rank 0 wraps its `DecodeBatch` in a `LeaderBatch`: before each change to the batch (a prompt joining, a
step, a warm-up) it broadcasts one `Command` on a gloo group of its own, carrying the rows that left since
the last command and, for a join, the request's token ids and image tensors and its generation settings
(sampling, seed, budget). The other ranks `follow`: they apply each command to their own batch, so every
rank runs the same prefills and steps, and the model's collectives (and the sampled token rank 0
broadcasts) line up. While idle, rank 0 sends a heartbeat every `heartbeat_s`; a follower that hears
nothing for `timeout_s`, or loses the connection, stops with an error. On rank 0 any failure of a
replicated command (a rank that died makes the broadcast or the model's collectives fail) is fatal:
the ranks may no longer hold the same batch, so `failed` is set and the front-end stops serving.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from cogvlm.errors import TensorParallelFailure
from cogvlm.inference.batching import GenerationRequest
from cogvlm.inference.decode_batch import DecodeBatch, RowToken
from cogvlm.inference.generate import GenerationConfig
from cogvlm.launch.distributed import ParallelRuntime, broadcast_object
from cogvlm.models.cogvlm import VisionLanguageModel

logger = logging.getLogger(__name__)
# Every failure message starts with this, on every rank.
FAILURE = "tensor-parallel serving failed"


def _describe(error: Exception) -> str:
    """`error` without gloo's generic advice after its first sentence."""
    return f"{type(error).__name__}: {str(error).split('. This is typically caused')[0]}"


@dataclass(frozen=True)
class CoordinationConfig:
    """How often an idle rank 0 proves it is alive, and how long the others wait before giving up."""

    heartbeat_s: float = 2.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s < self.timeout_s:
            raise ValueError(
                "CoordinationConfig needs 0 < heartbeat_s < timeout_s, "
                f"got heartbeat_s={self.heartbeat_s}, timeout_s={self.timeout_s}"
            )


@dataclass(frozen=True)
class BatchShape:
    """What every rank builds its decode batch from (rank 0's settings, shared at start-up)."""

    max_rows: int
    compiled: bool


@dataclass(frozen=True)
class Command:
    """One change to the decode batch: "join", "step", "warm_up", "heartbeat" or "stop"."""

    kind: str
    leaves: tuple[int, ...] = ()  # rows rank 0 dropped before this command, in order
    request: GenerationRequest | None = None
    config: GenerationConfig | None = None


class Channel:
    """Rank 0's commands to the other ranks, on a gloo group whose operations time out."""

    def __init__(self, runtime: ParallelRuntime, config: CoordinationConfig) -> None:
        self.runtime = runtime
        self.config = config
        # Every rank creates the group, in the same order as the runtime's own groups.
        self._group = dist.new_group(backend="gloo", timeout=timedelta(seconds=config.timeout_s))

    def send(self, command: Command) -> None:
        """Broadcast `command` from rank 0; a rank that is gone raises `TensorParallelFailure`."""
        try:
            dist.broadcast_object_list([command], src=0, group=self._group)
        except (RuntimeError, OSError) as error:  # gloo: connection closed / timed out
            raise TensorParallelFailure(
                f"{FAILURE}: rank 0 cannot reach the other ranks (did one stop?): {_describe(error)}"
            ) from error

    def receive(self) -> Command:
        """The next command from rank 0; silence past `timeout_s` or a lost rank 0 raises."""
        box = [None]
        try:
            dist.broadcast_object_list(box, src=0, group=self._group)
        except (RuntimeError, OSError) as error:
            raise TensorParallelFailure(
                f"{FAILURE}: rank {dist.get_rank()} lost rank 0 (no command or heartbeat for up to "
                f"{self.config.timeout_s:g} s, or the connection closed): {_describe(error)}"
            ) from error
        return box[0]


def share_batch_shape(shape: BatchShape | None, runtime: ParallelRuntime) -> BatchShape:
    """Rank 0's batch shape on every rank; waits (without the serving timeout) for every rank to load."""
    return broadcast_object(shape, runtime)


class LeaderBatch:
    """Rank 0's decode batch: every change is first sent to the other ranks (see the module doc)."""

    def __init__(self, batch: DecodeBatch, channel: Channel) -> None:
        self._batch = batch
        self._channel = channel
        self._lock = threading.Lock()  # one command at a time, in the order they run here
        self._leaves: list[int] = []
        self._last_sent = time.monotonic()
        self.failed = threading.Event()
        self.failure: TensorParallelFailure | None = None
        self._closed = False
        self._heartbeat = threading.Thread(target=self._beat, name="cogvlm-tp-heartbeat", daemon=True)
        self._heartbeat.start()

    @property
    def size(self) -> int:
        """Number of live rows."""
        return self._batch.size

    @property
    def has_cross_rows(self) -> bool:
        """True while the live rows attend to a cross-attention memory."""
        return self._batch.has_cross_rows

    def can_join(self, request: GenerationRequest) -> bool:
        """Whether `request` can join now (the same answer on every rank: their batches are equal)."""
        return self._batch.can_join(request)

    def join(self, request: GenerationRequest, config: GenerationConfig) -> RowToken:
        """Every rank prefills `request`; rank 0's first token is everyone's."""
        return self._run(Command("join", request=request, config=config), self._batch.join, request, config)

    def step(self) -> list[RowToken]:
        """Every rank advances its live rows by one token."""
        return self._run(Command("step"), self._batch.step)

    def warm_up(self, request: GenerationRequest, config: GenerationConfig) -> None:
        """Every rank warms its batch up (compiles its steps) with `request`."""
        self._run(Command("warm_up", request=request, config=config), self._batch.warm_up, request, config)

    def leave(self, row_id: int) -> None:
        """Drop a row here now; the other ranks drop it before the next command."""
        with self._lock:
            self._batch.leave(row_id)
            self._leaves.append(row_id)

    def close(self) -> None:
        """Tell the other ranks to stop following (unless the ranks already failed)."""
        with self._lock:
            if self._closed or self.failure is not None:
                self._closed = True
                return
            self._closed = True
            try:
                self._channel.send(Command("stop", tuple(self._leaves)))
            except TensorParallelFailure as error:
                logger.warning("%s", error)

    def _run(self, command: Command, operation, *args):
        with self._lock:
            if self.failure is not None:
                raise self.failure
            try:
                self._channel.send(dataclasses.replace(command, leaves=tuple(self._leaves)))
                self._leaves.clear()
                result = operation(*args)
            except TensorParallelFailure as failure:
                raise self._fail(failure)  # noqa: B904 (it names its cause)
            except Exception as error:  # noqa: BLE001 (the ranks may now differ: nothing is safe to run)
                raise self._fail(error) from error
            self._last_sent = time.monotonic()
            return result

    def _fail(self, error: Exception) -> TensorParallelFailure:
        if isinstance(error, TensorParallelFailure):
            failure = error
        else:
            failure = TensorParallelFailure(
                f"{FAILURE}: a decoding step failed on rank 0 (a rank that stopped makes the model's "
                f"collectives fail), so the ranks may no longer agree: {_describe(error)}"
            )
        if self.failure is None:
            self.failure = failure
            logger.error("%s; the server stops", failure)
            self.failed.set()
        return failure

    def _beat(self) -> None:
        """While no command runs, send a heartbeat every `heartbeat_s`."""
        interval = self._channel.config.heartbeat_s
        while not self._closed and self.failure is None:
            time.sleep(interval / 4)
            with self._lock:
                if self._closed or self.failure is not None:
                    return
                if time.monotonic() - self._last_sent < interval:
                    continue
                try:
                    self._channel.send(Command("heartbeat", tuple(self._leaves)))
                    self._leaves.clear()
                    self._last_sent = time.monotonic()
                except TensorParallelFailure as error:
                    self._fail(error)


def follow(batch: DecodeBatch, channel: Channel) -> None:
    """Apply rank 0's commands to this rank's `batch` until it says stop; a failure raises."""
    while True:
        command = channel.receive()
        for row_id in command.leaves:
            batch.leave(row_id)
        if command.kind == "stop":
            return
        try:
            if command.kind == "join":
                batch.join(command.request, command.config)
            elif command.kind == "step":
                batch.step()
            elif command.kind == "warm_up":
                batch.warm_up(command.request, command.config)
        except Exception as error:  # noqa: BLE001 (rank 0 fails on the same step and stops the server)
            raise TensorParallelFailure(
                f"{FAILURE}: rank {dist.get_rank()} failed a {command.kind} command: {_describe(error)}"
            ) from error


def replicated_batch(
    model: VisionLanguageModel,
    runtime: ParallelRuntime | None,
    shape: BatchShape,
    config: CoordinationConfig | None = None,
) -> tuple[DecodeBatch | LeaderBatch, Channel | None]:
    """This rank's decode batch: plain without tensor parallelism, a `LeaderBatch` on rank 0, else a plain
    batch to `follow` with the returned channel. Every rank must call it (it creates a process group)."""
    if runtime is None or not runtime.tp.is_parallel:
        return DecodeBatch(model, max_rows=shape.max_rows, compiled=shape.compiled), None
    channel = Channel(runtime, config or CoordinationConfig())
    shape = share_batch_shape(shape if runtime.is_first_rank else None, runtime)
    batch = DecodeBatch(model, max_rows=shape.max_rows, compiled=shape.compiled)
    if runtime.is_first_rank:
        return LeaderBatch(batch, channel), channel
    return batch, channel


def stop_on_failure(batch: DecodeBatch | LeaderBatch, stop: Callable[[], None]) -> None:
    """Call `stop` (from a watcher thread) once a `LeaderBatch` fails; nothing for a plain batch."""
    if not isinstance(batch, LeaderBatch):
        return

    def watch() -> None:
        batch.failed.wait()
        stop()

    threading.Thread(target=watch, name="cogvlm-tp-watch", daemon=True).start()


def finish(batch: DecodeBatch | LeaderBatch) -> None:
    """Once the front-end stopped: let the other ranks go, or raise the failure that stopped it."""
    if isinstance(batch, LeaderBatch):
        batch.close()
        if batch.failure is not None:
            raise batch.failure
