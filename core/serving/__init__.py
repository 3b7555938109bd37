"""Loading and running a tuned model, shared by the API (/predict, /generate, merged downloads)
and the worker's comparison, so a job's reported scores and generations come from the very code
that serves the model. Importing this package imports no torch; runtime and generation do.
"""
