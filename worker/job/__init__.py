"""One job's life in the worker around the loop: claiming it and keeping its lease, the SQL sink,
the outcome (model registered, checkpoints pruned, final state), export, TensorBoard, health."""
