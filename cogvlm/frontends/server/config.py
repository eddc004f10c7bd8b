"""What the server binds to, whom it lets in, and how much work and input it accepts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """Settings of `cogvlm serve`. The defaults are safe: loopback only, no remote or local image fetches."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_id: str = "cogvlm"
    api_key: str | None = None
    max_active: int = 4
    max_queue: int = 32
    request_timeout_s: float = 300.0
    default_max_tokens: int | None = None  # None: the model's answer budget, else up to its context
    max_request_bytes: int = 32 << 20
    max_buffered_bytes: int = 256 << 20  # bodies of all requests being read and parsed at once
    body_timeout_s: float = 60.0  # a body must arrive within this
    max_messages: int = 2048
    max_image_bytes: int = 20 << 20
    max_image_pixels: int = 4096 * 4096
    allow_remote_images: bool = False
    allow_file_images: bool = False
    remote_image_timeout_s: float = 10.0
    compiled_decode: bool = False  # decoding steps through torch.compile

    def __post_init__(self) -> None:
        positive = (
            "max_active",
            "max_queue",
            "default_max_tokens",
            "max_request_bytes",
            "max_buffered_bytes",
            "max_messages",
            "max_image_bytes",
            "max_image_pixels",
        )
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "body_timeout_s", "remote_image_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.max_buffered_bytes < self.max_request_bytes:
            raise ValueError(
                f"ServerConfig.max_buffered_bytes ({self.max_buffered_bytes}) must be >= max_request_bytes "
                f"({self.max_request_bytes})"
            )
        if not 0 <= self.port < 65536:
            raise ValueError(f"ServerConfig.port must be in [0, 65535], got {self.port}")
