"""Rank-0 run logs: TensorBoard scalars, one JSON line per logged step, and a progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Writes scalars to TensorBoard and `metrics.jsonl` (append-only, so a resumed run continues it)."""

    def __init__(
        self, log_dir: Path, *, enabled: bool, total_steps: int, start_step: int, progress_bar: bool
    ):
        self.enabled = enabled
        self._writer = None
        self._jsonl = None
        self._bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(log_dir / "tensorboard"))
        path = log_dir / METRICS_FILE
        is_torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self._jsonl = path.open("a", encoding="utf-8")
        if is_torn:  # a killed run stopped mid-line; start the next record on a line of its own
            self._jsonl.write("\n")
        self._bar = tqdm(total=total_steps, initial=start_step, desc="finetune", disable=not progress_bar)

    def log(self, step: int, scalars: dict[str, float], prefix: str = "train") -> None:
        """Record `scalars` for optimizer step `step` (1-based)."""
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(f"{prefix}/{name}", value, step)
        record = {"step": step, "kind": prefix, "time": time.time(), **scalars}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if prefix == "train" and "loss" in scalars:
            self._bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars.get('lr', 0):.2e}")

    def advance(self) -> None:
        """One optimizer step done."""
        if self.enabled:
            self._bar.update(1)

    def close(self) -> None:
        """Flush and close every sink."""
        if not self.enabled:
            return
        self._bar.close()
        self._writer.close()
        self._jsonl.close()


def read_metrics(log_dir: str | Path, kind: str = "train") -> dict[int, dict]:
    """The last record of each step in `metrics.jsonl` (a resumed run overwrites the steps it redoes)."""
    records: dict[int, dict] = {}
    path = Path(log_dir) / METRICS_FILE
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # empty, or torn by a kill
        if record["kind"] == kind:
            records[record["step"]] = record
    return records
