"""The FastAPI application: /v1/chat/completions (streaming and not), /v1/models, /health."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cogvlm.api import CogVLM
from cogvlm.frontends.server.body import BodyBudget, parse_json, read_body
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.errors import APIError, invalid
from cogvlm.frontends.server.generation import prepare_job
from cogvlm.frontends.server.requests import ChatRequest, parse_chat_request
from cogvlm.frontends.server.scheduler import Delta, Failed, Finished, Job, Scheduler

logger = logging.getLogger(__name__)
# While waiting for a non-streaming result, look this often whether the client has gone.
DISCONNECT_POLL_S = 0.5


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped, as `json.dumps` writes by default: any string can be sent."""

    def render(self, content) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error_response(error: APIError) -> JSONResponse:
    # A 408 or 413 leaves the rest of the body unread: the connection cannot carry another request.
    headers = {"Connection": "close"} if error.status in (408, 413) else None
    return AsciiJSONResponse(error.body(), status_code=error.status, headers=headers)


def _parse(raw: bytes, config: ServerConfig) -> ChatRequest:
    return parse_chat_request(parse_json(raw), config)


def _usage(finished: Finished) -> dict:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


class ChatService:
    """Turns requests into scheduler jobs and jobs into OpenAI responses."""

    def __init__(self, session: CogVLM, config: ServerConfig, batch=None) -> None:
        self.session = session
        self.config = config
        self.body_budget = BodyBudget(config.max_buffered_bytes)
        self.scheduler = Scheduler(
            session.model,
            session.tokenizer,
            max_active=config.max_active,
            max_queue=config.max_queue,
            timeout_s=config.request_timeout_s,
            compiled=config.compiled_decode,
            batch=batch,
        )

    def warm_up(self) -> None:
        """Decode a short greedy answer about a blank image, then one without an image, before serving."""
        blank = Image.new("RGB", (32, 32), "white")
        for image in (blank, None):
            chat = ChatRequest(
                model=self.config.model_id, query="Hi", history=(), image=image, temperature=0, max_tokens=8
            )
            self.scheduler.warm_up(prepare_job(self.session, self.config, chat))

    async def read_request(self, request: Request) -> ChatRequest:
        """Read the body under the size limit, parse and validate it (off the event loop)."""
        config = self.config
        raw = await read_body(request, config.max_request_bytes, config.body_timeout_s, self.body_budget)
        try:
            return await run_in_threadpool(_parse, raw, config)
        finally:
            self.body_budget.give(len(raw))

    async def submit(self, chat: ChatRequest) -> Job:
        """Prepare the prompt (prompt-length errors are 400s here, before any streaming) and queue it."""
        prepared = await run_in_threadpool(prepare_job, self.session, self.config, chat)
        return self.scheduler.submit(prepared)

    async def complete(self, job: Job, chat: ChatRequest, request: Request) -> JSONResponse:
        """Wait for the whole answer; a client that leaves frees its slot."""
        pieces = []
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return _error_response(APIError(499, "client disconnected"))
                continue
            if isinstance(event, Delta):
                pieces.append(event.text)
            elif isinstance(event, Failed):
                return _error_response(event.error)
            else:
                return AsciiJSONResponse(self._completion(chat, "".join(pieces), event))

    def _completion(self, chat: ChatRequest, text: str, finished: Finished) -> dict:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finished.finish_reason,
                }
            ],
            "usage": _usage(finished),
        }

    async def stream(self, job: Job, chat: ChatRequest) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, content chunks, a finish chunk, optional usage, `[DONE]`."""
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": chat.model,
        }

        def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
            choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
            return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                event = await job.events.get()
                if isinstance(event, Delta):
                    yield chunk({"content": event.text})
                elif isinstance(event, Failed):
                    yield f"data: {json.dumps(event.error.body())}\n\n"
                    break
                else:
                    yield chunk({}, event.finish_reason)
                    if chat.include_usage:
                        yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(event)})}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # a client that disconnected mid-stream frees its slot


def _check_api_key(request: Request, api_key: str | None) -> None:
    if api_key is None or request.url.path == "/health":
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), api_key.encode()):
        raise APIError(
            401,
            "missing or wrong API key (send 'Authorization: Bearer <key>')",
            type="authentication_error",
            code="invalid_api_key",
        )


def create_app(session: CogVLM, config: ServerConfig, batch=None) -> FastAPI:
    """The application serving `session` under `config` (with `batch` as its decode batch, if given)."""
    service = ChatService(session, config, batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if config.compiled_decode:  # compile before accepting requests: /health answers once it is done
            await run_in_threadpool(service.warm_up)
        service.scheduler.start()
        yield
        service.scheduler.stop()

    app = FastAPI(title="cogvlm", lifespan=lifespan)
    app.state.service = service

    @app.middleware("http")
    async def authenticate_and_catch(request: Request, call_next):
        try:
            _check_api_key(request, config.api_key)
            return await call_next(request)
        except APIError as error:
            return _error_response(error)
        except Exception as error:  # noqa: BLE001 - answered here, the connection stays usable
            logger.exception("internal error on %s", request.url.path)
            return _error_response(
                APIError(500, f"internal error: {type(error).__name__}: {error}", type="server_error")
            )

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return _error_response(
            APIError(error.status_code, str(error.detail), code=f"http_{error.status_code}")
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return _error_response(invalid(f"invalid request: {error.errors()}"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        chat = await service.read_request(request)
        job = await service.submit(chat)
        if chat.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(
                service.stream(job, chat), media_type="text/event-stream", headers=headers
            )
        return await service.complete(job, chat, request)

    @app.get("/v1/models")
    async def models():
        created = int(time.time())
        return {
            "object": "list",
            "data": [{"id": config.model_id, "object": "model", "created": created, "owned_by": "cogvlm"}],
        }

    @app.get("/health")
    async def health():
        failure = service.scheduler.failure
        if failure is not None:  # the server is about to stop: say so, not "ok"
            raise failure
        return {"status": "ok", "model": config.model_id, **service.scheduler.load}

    return app
