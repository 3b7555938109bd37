"""Loading a tokenizer, and saying which package is really missing when it cannot load.

Sentencepiece-only checkpoints (DeBERTa-v3's spm.model, KoBERT, Llama-family tokenizer.model)
are converted to a fast tokenizer on load, which needs `sentencepiece` and `protobuf`. When one
is absent transformers falls through to other converters and reports something unrelated (for
a DeBERTa-v3 directory: "tiktoken is required"): the files present decide what to ask for.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from worker.protocols import TrainingError

SENTENCEPIECE_FILES = ("spm.model", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model")


def missing_packages_for(directory: Path) -> list[str]:
    """Packages a sentencepiece-only tokenizer directory needs that are not installed."""
    if (directory / "tokenizer.json").is_file():
        return []  # a fast tokenizer loads from its JSON alone
    if not any((directory / name).is_file() for name in SENTENCEPIECE_FILES):
        return []
    return [pkg for pkg, module in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))
            if _absent(module)]


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ModuleNotFoundError, ValueError):  # a parent package (google) is missing; or blocked
        return True


def check_tokenizer_packages(source: str, shown_name: str) -> None:
    directory = Path(source)
    missing = missing_packages_for(directory) if directory.is_dir() else []
    if missing:
        raise TrainingError(f"The tokenizer of {shown_name!r} is a sentencepiece model and needs the "
                            f"{' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
                            f"pip install {' '.join(missing)} (both are tuneserve dependencies; the "
                            "environment lacks them).")


def load_tokenizer(source: str, shown_name: str) -> Any:
    from transformers import AutoTokenizer

    check_tokenizer_packages(source, shown_name)
    try:
        from core.settings import get_settings
        from core.store import tokenizer_options

        return AutoTokenizer.from_pretrained(source, **tokenizer_options(get_settings().trust_remote_code))
    except Exception as error:  # noqa: BLE001 - every reason becomes a message the user can act on
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise TrainingError(f"Cannot load the tokenizer of {shown_name!r}: {type(error).__name__}: "
                            f"{first}") from error
