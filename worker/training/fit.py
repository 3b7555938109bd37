"""The fit diagnosis the loop attaches to every evaluation: numbers in, a word out. Kept apart from
the classification metrics so the loop (and a chat job) does not import scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

# Fit diagnosis thresholds. The losses are means per unit (sample or token), in nats.
UNDERFIT_OF_BASELINE = 0.85   # train loss >= 85% of an uninformed model's loss: barely learned yet
OVERFIT_GAP_RATIO = 1.5       # validation loss > 1.5x the train loss...
OVERFIT_GAP_ABS = 0.1         # ...and more than 0.1 nats above it (tiny losses make ratios noisy)
TREND_TOLERANCE = 0.01        # validation loss moves by more than 1% of its best: a trend, not noise


def diagnose_fit(train_loss: float, eval_loss: float, previous_eval_losses: Sequence[float],
                 baseline_loss: float | None = None) -> str:
    """`underfitting` / `learning` / `good` / `overfitting`, as the seed scripts' table reads:

    - overfitting: validation loss well above train loss (ratio AND absolute gap above) and not
      improving any more (at or above its best so far), or rising by more than the tolerance;
    - underfitting: train loss still near the uninformed baseline (the label prior's loss);
    - learning: validation loss still falling (more than the tolerance below its best so far);
    - good: a small gap and a plateau: more epochs would not buy much.
    """
    best_before = min(previous_eval_losses) if previous_eval_losses else None
    improving = best_before is None or eval_loss < best_before * (1 - TREND_TOLERANCE)
    rising = best_before is not None and eval_loss > best_before * (1 + TREND_TOLERANCE)
    wide_gap = eval_loss > train_loss * OVERFIT_GAP_RATIO and eval_loss - train_loss > OVERFIT_GAP_ABS
    if wide_gap and (rising or not improving):
        return "overfitting"
    if baseline_loss is not None and baseline_loss > 0 and train_loss >= UNDERFIT_OF_BASELINE * baseline_loss:
        return "underfitting"
    if improving:
        return "learning"
    return "good"
