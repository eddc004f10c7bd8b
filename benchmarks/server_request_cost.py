"""What a hostile chat request costs the server before it is refused or queued, in process; prints JSON.

Each case is a body as it arrives (bytes), taken through the server's own parsing and validation
(`parse_json`, `parse_chat_request`) and, when that passes, the prompt-length check of `prepare_job`
against the embedded model (`cogvlm.api.load()`). Reported per case: the outcome (HTTP status and
message start), the median wall time, and the peak of memory Python allocated (tracemalloc). For scale,
the time to tokenize the 20 MB prompt in full, which the length check avoids, is reported too.
Usage: python benchmarks/server_request_cost.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc

import cogvlm.api
from cogvlm.api import CogVLM
from cogvlm.frontends.server.body import parse_json
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.errors import APIError
from cogvlm.frontends.server.generation import prepare_job
from cogvlm.frontends.server.requests import parse_chat_request


def _messages(count: int, text: str) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": text}] * count, "max_tokens": 1}).encode()


CASES = {
    "2048 same-role messages of 10 kB": lambda: _messages(2048, "x" * 10_000),
    "320k messages": lambda: _messages(320_000, "a"),
    "10M empty objects (30 MB)": lambda: b'{"x": [' + b"{}," * 10_000_000 + b"{}]}",
    "nested 50,000 deep": lambda: b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "20 MB prompt": lambda: _messages(1, "word " * (4 << 20)),
}


def run_case(session: CogVLM, raw: bytes, config: ServerConfig) -> str:
    """The outcome of one body: "200" when it would be queued, else the error's status and message."""
    try:
        prepare_job(session, config, parse_chat_request(parse_json(raw), config))
    except APIError as error:
        return f"{error.status} {error.message[:80]}"
    return "200"


def measure(session: CogVLM, raw: bytes, repeats: int) -> dict:
    """Outcome, median seconds and peak traced megabytes of one case."""
    config = ServerConfig()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        outcome = run_case(session, raw, config)
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    run_case(session, raw, config)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "outcome": outcome,
        "median_s": round(statistics.median(times), 4),
        "peak_mb": round(peak / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    session = cogvlm.api.load()  # the embedded model
    tokenizer = session.tokenizer
    results = {name: measure(session, make(), args.repeats) for name, make in CASES.items()}
    started = time.perf_counter()
    tokenizer.encode("word " * (4 << 20))
    results["tokenizing the 20 MB prompt in full (avoided)"] = {
        "seconds": round(time.perf_counter() - started, 2)
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
