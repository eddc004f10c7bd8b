"""tools/gpu_figures.sh, the one script a lent GPU machine runs, dry-run on the CPU with the tiny config:
every step runs and writes the figures it promises (so the script is ready the moment a device is)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_figures.sh"


def test_the_gpu_figures_script_runs_every_step_on_the_cpu(tmp_path):
    environment = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "TMPDIR": str(tmp_path),
        "DEVICE": "cpu",
        "DTYPE": "float32",
        "BENCH_CONFIGS": "tiny",
        "BENCH_FLAGS": "--new_tokens 4",
        "MEMORY_MODELS": "tiny",
        "REPEATS": "1",
    }
    done = subprocess.run(["bash", str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    bench = json.loads((out / "bench-tiny.json").read_text())
    assert bench["config"] == "tiny" and bench["new_tokens"] == 4 and bench["first_token_ms"] > 0
    memory = json.loads((out / "memory.json").read_text())
    runs = memory["runs"]
    assert [run["quant"] for run in runs] == [None, 8, 4]
    for run in runs:
        assert "error" not in run, run
        assert run["model_bytes"] > 0 and run["load_peak_device_bytes"] > 0
        assert run["host_transient_within_budget"] is True
    assert runs[2]["model_bytes"] < runs[1]["model_bytes"] < runs[0]["model_bytes"]
    assert not (out / "cuda-tests.log").exists()  # CUDA-only steps are skipped on the CPU


def test_the_load_peak_trace_lists_the_blocks_alive_at_the_peak_largest_first(monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(SCRIPT.parents[1] / "benchmarks"))  # as when run as a script
    memory = importlib.import_module("memory")
    frame = {"filename": "/x/cogvlm/checkpoints/streaming.py", "line": 153, "name": "_to_device"}
    events = [
        {"action": "alloc", "addr": 1, "size": 10, "frames": [frame]},
        {"action": "alloc", "addr": 2, "size": 30, "frames": []},  # a temporary, freed before the end
        {"action": "free_requested", "addr": 2, "size": 30},
        {"action": "free_completed", "addr": 2, "size": 30},
        {"action": "alloc", "addr": 3, "size": 5, "frames": []},  # after the peak (40 bytes): not listed
    ]
    found = memory._allocations_at_peak({"device_traces": [events]})
    assert found == [{"bytes": 30, "where": []}, {"bytes": 10, "where": ["streaming.py:153 _to_device"]}]
