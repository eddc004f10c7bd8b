"""Serving a loaded model with uvicorn."""

from __future__ import annotations

import logging

from cogvlm.api import CogVLM
from cogvlm.frontends.server.app import create_app
from cogvlm.frontends.server.config import ServerConfig

logger = logging.getLogger(__name__)


def serve(session: CogVLM, config: ServerConfig) -> None:
    """Run the server until interrupted; binds `config.host` (loopback unless told otherwise)."""
    import uvicorn

    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        logger.warning(
            "serving on %s without an API key: anyone who can reach it can use the model", config.host
        )
    uvicorn.run(create_app(session, config), host=config.host, port=config.port, log_level="info")
