"""This process's anonymous resident memory (heap: not the page cache of mapped files), for the benchmarks."""

from __future__ import annotations


def rss_anon_bytes() -> int:
    """RssAnon of /proc/self/status, in bytes (Linux only)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no RssAnon line (Linux only)")
