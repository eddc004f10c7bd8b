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
    max_image_bytes: int = 20 << 20
    max_image_pixels: int = 4096 * 4096
    allow_remote_images: bool = False
    allow_file_images: bool = False
    remote_image_timeout_s: float = 10.0
    compiled_decode: bool = False  # decoding steps through torch.compile

    def __post_init__(self) -> None:
        for name in ("max_active", "max_queue", "default_max_tokens", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"ServerConfig.request_timeout_s must be > 0, got {self.request_timeout_s}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"ServerConfig.port must be in [0, 65535], got {self.port}")
