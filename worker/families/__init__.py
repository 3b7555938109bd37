"""Task families: everything that differs between what a model learns to do.

A dataset's task (single_label, multi_label, chat) is trained by one family, which owns, for it:

    build_training_task the TrainingTask the one loop (worker/training/loop.py) trains
    model_meta          what a tuned model records beside its files (export and registration)
    compare             the report stored under `comparison` on the job (classification: the
                        tuned model beside the majority and TF-IDF baselines on the same rows;
                        chat: base vs tuned replies to held-out prompts)

Each family is a package here (classification/, chat/); loading.py holds the tokenizer and model
loading they share; the metrics and job defaults of each task are in core/catalogue.py. Adding a
family is a new package plus its entry in the catalogue. Nothing heavy is imported at import time.
"""

from __future__ import annotations

from core.catalogue import entry_for
from worker.families.base import TaskFamily
from worker.families.chat import CHAT
from worker.families.classification import CLASSIFICATION

FAMILIES: dict[str, TaskFamily] = {family.name: family for family in (CLASSIFICATION, CHAT)}


def family_for(task: str) -> TaskFamily:
    """The family that trains datasets of `task` (UnsupportedTask when none does)."""
    return FAMILIES[entry_for(task).family]
