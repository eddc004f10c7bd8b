"""Runs generation on one worker thread: a bounded queue and one continuous decode batch, in which
requests start as soon as a row is free and every live request advances one token per forward pass;
cancellation (client gone) and per-request deadlines free a row between steps."""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from dataclasses import dataclass, field

from cogvlm.errors import TensorParallelFailure
from cogvlm.frontends.server.errors import APIError
from cogvlm.inference.batching import GenerationRequest
from cogvlm.inference.decode_batch import DecodeBatch, RowToken
from cogvlm.inference.generate import GenerationConfig
from cogvlm.inference.streaming import TextStream
from cogvlm.models.cogvlm import VisionLanguageModel


@dataclass(frozen=True)
class Delta:
    """New text of a job."""

    text: str


@dataclass(frozen=True)
class Finished:
    """A job's end: why it stopped and the token counts."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """A job that could not run (the error is answered to the client)."""

    error: APIError


@dataclass(frozen=True)
class PreparedJob:
    """A job's model inputs, its generation settings (without stop strings) and its stop strings."""

    request: GenerationRequest
    config: GenerationConfig
    prompt_tokens: int
    stop: tuple[str, ...]


@dataclass
class Job:
    """One request on its way through the scheduler; events go to `events`: an asyncio queue on the
    client's event loop, or a `queue.Queue` (`loop` None) for a caller outside any event loop."""

    prepared: PreparedJob
    loop: asyncio.AbstractEventLoop | None
    events: asyncio.Queue | queue.Queue
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    text: TextStream | None = None
    completion_tokens: int = 0

    def emit(self, event) -> None:
        """Hand an event to the client's coroutine (or thread)."""
        if self.loop is None:
            self.events.put_nowait(event)
        else:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        """Stop working on this job (its client is gone)."""
        self.cancelled.set()


class Scheduler:
    """Queues jobs and runs up to `max_active` of them as rows of one continuous decode batch.

    `batch` replaces the scheduler's own `DecodeBatch` (a tensor-parallel `LeaderBatch`, whose
    `TensorParallelFailure` fails every job and stops the scheduler for good).
    """

    def __init__(
        self,
        model: VisionLanguageModel,
        tokenizer,
        *,
        max_active: int,
        max_queue: int,
        timeout_s: float,
        compiled: bool = False,
        batch=None,
    ) -> None:
        self._batch = (
            batch if batch is not None else DecodeBatch(model, max_rows=max_active, compiled=compiled)
        )
        self._tokenizer = tokenizer
        self._max_active = max_active
        self._max_queue = max_queue
        self._timeout_s = timeout_s
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: dict[int, Job] = {}  # by row id
        self._joining = 0  # jobs taken from the queue whose prefill is running
        self._condition = threading.Condition()
        self._stopping = False
        self._failure: TensorParallelFailure | None = None
        self._largest_step = 0  # most rows one forward pass has advanced
        self._thread = threading.Thread(target=self._run, name="cogvlm-generation", daemon=True)

    def warm_up(self, prepared: PreparedJob) -> None:
        """Run `prepared` through the decode batch before serving (compiles a compiled batch's steps)."""
        if self._thread.is_alive():
            raise RuntimeError("warm the scheduler up before starting it")
        self._batch.warm_up(prepared.request, prepared.config)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker thread after the current step."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join(timeout=30)

    @property
    def failure(self) -> APIError | None:
        """The error every request gets once the batch is lost (a tensor-parallel rank failed), else None:
        set by a failed step, or by the batch's own watch of the other ranks while the server is idle."""
        with self._condition:
            failure = self._lost()
        return None if failure is None else _failure_error(failure)

    def _lost(self) -> TensorParallelFailure | None:
        """Why the batch is lost, if it is. Called with the lock held."""
        return self._failure or getattr(self._batch, "failure", None)

    @property
    def load(self) -> dict[str, int]:
        """How many jobs run and wait, and the most that one decoding step has advanced together."""
        with self._condition:
            return {
                "active": len(self._active),
                "waiting": len(self._waiting),
                "largest_step": self._largest_step,
            }

    def submit(self, prepared: PreparedJob) -> Job:
        """Queue a job for the calling coroutine's event loop (or thread); a full queue is a 429."""
        try:
            loop, events = asyncio.get_running_loop(), asyncio.Queue()
        except RuntimeError:
            loop, events = None, queue.Queue()
        job = Job(prepared, loop, events, time.monotonic() + self._timeout_s)
        with self._condition:
            lost = self._lost()
            if lost is not None:
                raise _failure_error(lost)
            if self._stopping:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if self._queued() >= self._max_queue:
                raise APIError(
                    429,
                    f"the server is busy: {self._max_queue} requests are already waiting; retry later",
                    type="rate_limit_error",
                    code="queue_full",
                )
            self._waiting.append(job)
            self._condition.notify()
        return job

    def _queued(self) -> int:
        """Jobs that would wait for a row: those beyond the free rows. Called with the lock held.

        Jobs submitted since the worker last admitted are still in `_waiting` although rows are free for
        them, so the queue is what exceeds `max_rows`, not `_waiting` itself; jobs whose client left
        no longer count.
        """
        if any(job.cancelled.is_set() for job in self._waiting):
            self._waiting = collections.deque(job for job in self._waiting if not job.cancelled.is_set())
        return max(0, len(self._waiting) + self._joining + len(self._active) - self._max_active)

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                self._drop_gone_rows()
                self._admit()
                self._step()
        except TensorParallelFailure as failure:
            self._fail_all(failure)

    def _fail_all(self, failure: TensorParallelFailure) -> None:
        """The batch is lost: every running and waiting job fails, and so does every later one."""
        with self._condition:
            self._failure = failure
            jobs = [*self._active.values(), *self._waiting]
            self._active.clear()
            self._waiting.clear()
        for job in jobs:
            job.emit(Failed(_failure_error(failure)))

    def _wait_for_work(self) -> bool:
        """Block while there is nothing to do; False once the scheduler stops."""
        with self._condition:
            while not self._stopping and not self._active and not self._waiting:
                self._condition.wait()
            return not self._stopping

    def _next_waiting(self) -> Job | None:
        """The oldest waiting job if it can join the batch now (jobs start in arrival order)."""
        with self._condition:
            while self._waiting and self._expired(self._waiting[0]):
                self._waiting.popleft()
            if not self._waiting or not self._batch.can_join(self._waiting[0].prepared.request):
                return None
            self._joining += 1  # neither waiting nor active while its prefill runs
            return self._waiting.popleft()

    def _admit(self) -> None:
        """Prefill waiting jobs into free rows; each one's first token comes from its prefill."""
        while (job := self._next_waiting()) is not None:
            try:
                first = self._batch.join(job.prepared.request, job.prepared.config)
            except TensorParallelFailure:
                with self._condition:
                    self._joining -= 1
                    self._waiting.appendleft(job)  # it fails with the others
                raise
            except Exception as error:  # a bug must fail one request, not the server
                with self._condition:
                    self._joining -= 1
                job.emit(Failed(_generation_error(error)))
                continue
            job.text = TextStream(self._tokenizer, job.prepared.stop)
            with self._condition:
                self._joining -= 1
                if first.finish_reason is None:
                    self._active[first.row_id] = job
            self._deliver(job, first)

    def _step(self) -> None:
        """Advance every live row by one token."""
        if not self._active:
            return
        try:
            results = self._batch.step()
        except TensorParallelFailure:
            raise
        except Exception as error:  # the whole batch failed: fail its jobs, keep serving
            for row_id in list(self._active):
                self._release(row_id).emit(Failed(_generation_error(error)))
            return
        self._largest_step = max(self._largest_step, len(results))
        for result in results:
            job = self._active.get(result.row_id)
            if job is not None:
                self._deliver(job, result)

    def _drop_gone_rows(self) -> None:
        """Free the rows of jobs whose client left or whose deadline passed."""
        for row_id, job in list(self._active.items()):
            if self._expired(job):
                self._release(row_id)

    def _release(self, row_id: int) -> Job:
        self._batch.leave(row_id)
        with self._condition:
            return self._active.pop(row_id)

    def _expired(self, job: Job) -> bool:
        if job.cancelled.is_set():
            return True
        if time.monotonic() > job.deadline:
            job.emit(
                Failed(
                    APIError(
                        504,
                        f"the request took longer than {self._timeout_s:g} s",
                        type="timeout_error",
                        code="timeout",
                    )
                )
            )
            return True
        return False

    def _deliver(self, job: Job, result: RowToken) -> None:
        """Pass one token's text on; finish the job on an end token, its budget, or a stop string."""
        job.completion_tokens += 1
        text = job.text.push(result.token_id)
        stopped = job.text.hit_stop_string
        if not stopped and result.finish_reason is None:
            if text:
                job.emit(Delta(text))
            return
        if result.finish_reason is None:
            self._batch.leave(result.row_id)  # a stop string: the batch does not know it ended
        with self._condition:
            self._active.pop(result.row_id, None)
        reason = "stop" if stopped or result.finish_reason == "end_token" else "length"
        self._finish(job, reason, text + job.text.finish())

    @staticmethod
    def _finish(job: Job, reason: str, text: str) -> None:
        if text:
            job.emit(Delta(text))
        job.emit(Finished(reason, job.prepared.prompt_tokens, job.completion_tokens))


def _failure_error(failure: TensorParallelFailure) -> APIError:
    return APIError(503, str(failure), type="server_error", code="tensor_parallel_failure")


def _generation_error(error: Exception) -> APIError:
    return APIError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")
