"""What the API (`app/`) and the worker (`worker/`) share: settings, the database, the SQL tables,
the model store, the queue, the job spec, the stored-dataset contract and the job states.

Imports neither `app` nor `worker`, and nothing heavy at import (no torch), so the API starts
fast and the worker needs nothing from the API's package.
"""
