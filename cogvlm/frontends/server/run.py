"""Serving a loaded model with uvicorn, on one process or on every rank of a tensor-parallel job."""

from __future__ import annotations

import logging

from cogvlm.api import CogVLM
from cogvlm.frontends.server.app import create_app
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.tp_coordinator import (
    BatchShape,
    CoordinationConfig,
    finish,
    follow,
    replicated_batch,
    stop_on_failure,
)
from cogvlm.launch.distributed import ParallelRuntime

logger = logging.getLogger(__name__)
# Seconds uvicorn waits for open connections once it stops (every job has failed by then).
GRACEFUL_SHUTDOWN_S = 10


def serve(
    session: CogVLM,
    config: ServerConfig,
    runtime: ParallelRuntime | None = None,
    coordination: CoordinationConfig | None = None,
) -> None:
    """Run the server until interrupted; binds `config.host` (loopback unless told otherwise).

    Under tensor parallelism rank 0 serves HTTP and the other ranks follow its decode batch; a rank that
    stops makes rank 0 fail every request, stop serving and raise `TensorParallelFailure`.
    """
    import uvicorn

    shape = BatchShape(config.max_active, config.compiled_decode)
    batch, channel = replicated_batch(session.model, runtime, shape, coordination)
    if channel is not None and not runtime.is_first_rank:
        follow(batch, channel)
        return
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        logger.warning(
            "serving on %s without an API key: anyone who can reach it can use the model", config.host
        )
    app = create_app(session, config, batch)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    )
    stop_on_failure(batch, lambda: setattr(server, "should_exit", True))
    try:
        server.run()
    finally:
        finish(batch)
