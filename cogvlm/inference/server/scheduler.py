"""Runs generation jobs on one worker thread: a bounded queue, a bounded set of active jobs advanced
token by token in turn, cancellation (client gone) and per-request deadlines."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from cogvlm.inference.server.errors import APIError
from cogvlm.inference.server.stop_strings import StopStringFilter
from cogvlm.text_processors import IncrementalDecoder


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
    """What a job needs to start: its token iterator (prefill happens on the first step) and its limits."""

    steps: Iterator[int]
    prompt_tokens: int
    end_token_ids: tuple[int, ...]
    stop: tuple[str, ...]


@dataclass
class Job:
    """One request on its way through the scheduler; events go to `events` on the client's event loop."""

    prepared: PreparedJob
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    decoder: IncrementalDecoder | None = None
    stop_filter: StopStringFilter | None = None
    completion_tokens: int = 0

    def emit(self, event) -> None:
        """Hand an event to the client's coroutine."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        """Stop working on this job (its client is gone)."""
        self.cancelled.set()


class Scheduler:
    """Admits up to `max_active` jobs and advances each by one token per round; others wait in a queue."""

    def __init__(self, tokenizer, *, max_active: int, max_queue: int, timeout_s: float) -> None:
        self._tokenizer = tokenizer
        self._max_active = max_active
        self._max_queue = max_queue
        self._timeout_s = timeout_s
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="cogvlm-generation", daemon=True)

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
    def load(self) -> dict[str, int]:
        """How many jobs run and wait."""
        with self._condition:
            return {"active": len(self._active), "waiting": len(self._waiting)}

    def submit(self, prepared: PreparedJob) -> Job:
        """Queue a job for the calling coroutine's event loop; a full queue is a 429."""
        loop = asyncio.get_running_loop()
        job = Job(prepared, loop, asyncio.Queue(), time.monotonic() + self._timeout_s)
        with self._condition:
            if self._stopping:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if len(self._waiting) >= self._max_queue:
                raise APIError(
                    429,
                    f"the server is busy: {len(self._waiting)} requests are already waiting; retry later",
                    type="rate_limit_error",
                    code="queue_full",
                )
            self._waiting.append(job)
            self._condition.notify()
        return job

    def _admit(self) -> bool:
        """Move waiting jobs into free active slots; return False when there is nothing to do."""
        with self._condition:
            while not self._stopping and not self._active and not self._waiting:
                self._condition.wait()
            if self._stopping:
                return False
            admitted = []
            while self._waiting and len(self._active) + len(admitted) < self._max_active:
                admitted.append(self._waiting.popleft())
        for job in admitted:
            if self._expired(job):
                continue
            job.decoder = IncrementalDecoder(self._tokenizer)
            job.stop_filter = StopStringFilter(job.prepared.stop)
            with self._condition:
                self._active.append(job)
        return True

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

    def _run(self) -> None:
        while self._admit():
            for job in list(self._active):
                if self._expired(job) or not self._advance(job):
                    with self._condition:
                        self._active.remove(job)

    def _advance(self, job: Job) -> bool:
        """Generate one token of `job`; return False once the job is over."""
        try:
            token = next(job.prepared.steps, None)
        except Exception as error:  # a bug must fail one request, not the server
            job.emit(
                Failed(
                    APIError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")
                )
            )
            return False
        if token is None or token in job.prepared.end_token_ids:
            job.completion_tokens += token is not None
            reason = "length" if token is None else "stop"
            self._finish(job, reason, job.decoder.flush())
            return False
        job.completion_tokens += 1
        text = job.stop_filter.push(job.decoder.push(token))
        if text:
            job.emit(Delta(text))
        if job.stop_filter.stopped:
            self._finish(job, "stop", "")
            return False
        return True

    def _finish(self, job: Job, reason: str, tail: str) -> None:
        text = job.stop_filter.push(tail) + job.stop_filter.flush()
        if text:
            job.emit(Delta(text))
        reason = "stop" if job.stop_filter.stopped else reason
        job.emit(Finished(reason, job.prepared.prompt_tokens, job.completion_tokens))
