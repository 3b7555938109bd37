"""What every task family does the same way when it loads or saves a model: the tokenizer (and
which package is really missing when it cannot load), the padding token, and a checkpoint's
servable files and weights.

Sentencepiece-only checkpoints (DeBERTa-v3's spm.model, KoBERT, Llama-family tokenizer.model)
are converted to a fast tokenizer on load, which needs `sentencepiece` and `protobuf`. When one
is absent transformers falls through to other converters and reports something unrelated (for
a DeBERTa-v3 directory: "tiktoken is required"): the files present decide what to ask for.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from worker.training.protocols import TrainingError

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


def set_pad_token(model: Any, tokenizer: Any, shown_name: str) -> None:
    """Pad with EOS where the tokenizer has no padding token, and tell the model which id it is."""
    from core.store import ensure_pad_token

    try:
        ensure_pad_token(tokenizer)
    except ValueError as error:
        raise TrainingError(f"The tokenizer of {shown_name!r} has neither a padding nor an end "
                            "token.") from error
    model.config.pad_token_id = tokenizer.pad_token_id


def save_servable(model: Any, tokenizer: Any, directory: Path, meta: dict[str, Any]) -> None:
    """A checkpoint's servable files: the Hugging Face directory (a LoRA model saves its adapter
    only), the tokenizer and tuneserve.json."""
    from core.store import write_model_meta

    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_model_meta(directory, meta)


def load_weights_into(model: Any, directory: Path) -> None:
    """Load the weights save_servable wrote into `model`, in place. Through from_pretrained rather
    than raw safetensors: it undoes any key renaming the architecture's save applies."""
    from core.settings import get_settings
    from core.store import load_options

    saved = type(model).from_pretrained(directory, **load_options(get_settings().trust_remote_code))
    model.load_state_dict(saved.state_dict())
    del saved
