"""The training worker: the Celery app and tasks, the task-agnostic training loop (loop.py) and
the tasks it trains (classification.py)."""
