"""TensorBoard event files for a job, beside its checkpoints: <models dir>/jobs/<id>/tensorboard/.

The seed users' tool: `tensorboard --logdir <models dir>` shows every run, named by its job id.
SQL stays the record the API serves; these files are a copy for TensorBoard, so a failure to
write them is logged and never fails a training job.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("tuneserve.worker.job.tensorboard")

TENSORBOARD_DIRNAME = "tensorboard"


class TensorBoardLog:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer: Any = None
        self._purge_step: int | None = None
        self._broken = False

    def resumed_at(self, step: int) -> None:
        """A resumed attempt retrains the steps after its checkpoint: TensorBoard drops what the
        lost attempt wrote past it, so no step shows twice."""
        self._purge_step = step + 1

    def scalars(self, prefix: str, step: int, values: dict[str, Any]) -> None:
        """Every finite number in `values` as `<prefix>/<name>` (nested figures such as the
        confusion matrix stay in SQL)."""
        numbers = {k: float(v) for k, v in values.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        writer = self._open()
        if writer is None or not numbers:
            return
        try:
            for name, value in numbers.items():
                writer.add_scalar(f"{prefix}/{name}", value, step)
            # Points come at most every logging_steps: flushing each keeps a live TensorBoard current.
            writer.flush()
        except Exception:
            self._give_up("writing")

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                log.warning("closing the TensorBoard log in %s failed", self.log_dir, exc_info=True)
            self._writer = None

    def _open(self) -> Any:
        if self._writer is None and not self._broken:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_step)
            except Exception:
                self._give_up("opening")
        return self._writer

    def _give_up(self, doing: str) -> None:
        log.warning("%s the TensorBoard log in %s failed; the job goes on without it", doing, self.log_dir,
                    exc_info=True)
        self._broken = True
        self._writer = None
