"""Which base model a job starts from: a tuned model of the caller's, a bundled one, a local
model directory or a Hugging Face hub name, checked before the job is queued, so that a name
that cannot work is refused at once instead of failing in a worker minutes later.

POST /jobs and POST /experiments both resolve their base models here. No HTTP: a name that
cannot work raises `UnusableBaseModel`, whose text the route sends as the 422's detail.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy.orm import Session

from app.auth import Principal
from core import store
from core.settings import Settings
from core.tables import TunedModel

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class UnusableBaseModel(ValueError):
    """The name cannot be trained from; `str(error)` says why and what to pass instead."""


def resolve_base_model(session: Session, settings: Settings, principal: Principal,
                       name: str | None) -> tuple[str, str | None]:
    """(base_model as recorded, tuned model id when it names one)."""
    if not name:
        return settings.default_base_model, None
    name = name.strip()
    if principal.visible(session.get(TunedModel, name)) is not None:
        return name, name
    if name.startswith("mdl_"):
        # Another key's model answers exactly as a missing one: the refusal must not confirm it exists.
        raise UnusableBaseModel(f"base_model {name!r} looks like a tuned model id, but no such model "
                                "exists; GET /models lists them.")
    if name in store.BUNDLED_MODEL_NAMES:
        return name, None
    if name.startswith(("/", ".", "~")) or "\\" in name or ".." in name.split("/"):
        return _local_base_model(settings, principal, name), None
    if principal.is_admin and Path(name).exists():  # a relative directory, as before keys existed
        return _local_base_model(settings, principal, name), None
    if not HUB_ID.match(name):
        raise UnusableBaseModel(f"base_model {name!r} is neither a local directory nor a Hugging Face hub "
                                "name such as 'klue/bert-base'.")
    _check_hub_model(name, settings.hub_check_timeout_s)
    return name, None


def _local_base_model(settings: Settings, principal: Principal, name: str) -> str:
    """A local model directory, resolved. A non-admin key gets the same answer for a path that
    exists and one that does not, unless it lies in TUNESERVE_BASE_MODEL_DIRS: the API must not
    let callers probe the server's filesystem."""
    allowed = settings.base_model_dir_paths
    # Decided on the path's text alone (no filesystem call) before anything is looked up...
    lexical = Path(os.path.normpath(os.path.abspath(os.path.expanduser(name))))
    try:
        path = Path(name).expanduser().resolve() if principal.is_admin or _inside(lexical, allowed) else None
    except (OSError, RuntimeError) as e:  # a symlink loop, an unreadable /proc entry
        raise UnusableBaseModel(f"base_model {name!r} is not a usable local path "
                                f"({type(e).__name__})") from e
    # ...and again after symlinks are followed, so a link in an allowed directory leads nowhere else.
    if path is None or (not principal.is_admin and not _inside(path, allowed)):
        where = ", ".join(str(d) for d in allowed) or "none are configured (TUNESERVE_BASE_MODEL_DIRS)"
        raise UnusableBaseModel(f"base_model {name!r} is a local path; with an API key that is not an admin "
                                f"key, only directories under these are allowed: {where}. Use a hub name "
                                "or the id of one of your tuned models instead.")
    # Checkpoints and models of jobs are addressed by model id (ownership is checked there),
    # never by path: a path would reach another job's files.
    for private in (settings.models_dir, settings.data_dir):
        if path.is_relative_to(Path(private).resolve()):
            raise UnusableBaseModel(f"base_model {name!r} lies inside the service's own storage; name a "
                                    "tuned model by its id (GET /models) instead of its path.")
    try:
        is_model_dir = (path / "config.json").is_file()
    except OSError:
        is_model_dir = False
    if not is_model_dir:
        raise UnusableBaseModel(f"base_model {name!r} is not a Hugging Face model directory (no readable "
                                "config.json there).")
    return str(path)


def _inside(path: Path, directories: list[Path]) -> bool:
    return any(path.is_relative_to(d) for d in directories)


def _check_hub_model(name: str, timeout_s: float) -> None:
    """A hub name is accepted when it is in the local cache, or when the hub says it exists.
    Without a network the answer is a refusal within `timeout_s`, not a job that hangs in a worker."""
    from huggingface_hub import HfApi, is_offline_mode, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if is_offline_mode():
        raise UnusableBaseModel(f"base_model {name!r} is not in the local Hugging Face cache and the "
                                "hub is offline (HF_HUB_OFFLINE is set). Unset HF_HUB_OFFLINE on a "
                                "machine with a network, or download the model and pass its directory.")
    try:
        HfApi().model_info(name, timeout=timeout_s)
    except RepositoryNotFoundError as exc:
        raise UnusableBaseModel(f"base_model {name!r} is not a model on the Hugging Face hub (or it is "
                                "private or gated: set HF_TOKEN for the API and the worker).") from exc
    except HfHubHTTPError as exc:
        raise UnusableBaseModel(f"The Hugging Face hub refused base_model {name!r} ({exc}); check the "
                                "name, or download the model and pass its directory.") from exc
    except Exception as exc:  # noqa: BLE001 - the hub client's transport errors (connect, timeout,
        # DNS) are its HTTP library's own classes, whichever it uses: each means "not reachable".
        raise UnusableBaseModel(f"base_model {name!r} is not in the local Hugging Face cache and the hub "
                                f"cannot be reached ({type(exc).__name__}: {exc}). Check the network (or "
                                "HF_ENDPOINT), or download the model and pass its directory.") from exc
