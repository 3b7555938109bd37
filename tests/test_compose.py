"""docker-compose.yml and .env.example, checked without a Docker engine (none runs here): the
services, one image built once, health checks and the order they gate, volumes, GPU placement,
and that every TUNESERVE_ variable the stack sets is a real setting with a valid value."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from core.settings import ENV_PREFIX, Settings
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
TUNESERVE_SERVICES = ("migrate", "api", "worker")
# TUNESERVE_ names that are not Settings fields: the config-file pointer (read before Settings)
# and the command-line client's own two.
NOT_SETTINGS = {"TUNESERVE_CONFIG", "TUNESERVE_URL", "TUNESERVE_API_KEY"}
SUBSTITUTION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _substitute(value: str) -> str:
    """Compose's `${NAME:-default}` with nothing set: the default."""
    return SUBSTITUTION.sub(lambda m: m.group(2) or "", value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _substitute(str(v)) for k, v in env.items()}


def _setting_name(variable: str) -> str:
    return variable.removeprefix(ENV_PREFIX).lower()


def test_the_services_and_one_image_built_once(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    builders = [name for name, s in services.items() if "build" in s]
    assert builders == ["migrate"], "exactly one service builds the tuneserve image"
    image = services["migrate"]["image"]
    assert all(services[name]["image"] == image for name in TUNESERVE_SERVICES)
    assert services["migrate"]["build"]["dockerfile"] == "Dockerfile.gpu"
    assert (ROOT / "Dockerfile.gpu").is_file()
    # Everything that uses the image starts after the service that builds it has finished.
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_health_checks_gate_the_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "api", "worker"):
        test = services[name]["healthcheck"]["test"]
        assert test and test[0] in {"CMD", "CMD-SHELL"}, name
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert services[name]["restart"] == "unless-stopped"
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    # The worker's check is the beat file its process keeps fresh (worker/job/health.py).
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.job.health"]
    assert _environment(services["worker"])["TUNESERVE_WORKER_HEALTH_FILE"]
    assert (ROOT / "worker" / "health.py").is_file()


def test_volumes_share_datasets_and_models_and_keep_the_state(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose["volumes"])
    for name in TUNESERVE_SERVICES:
        mounts = dict(m.split(":", 1) for m in services[name]["volumes"])
        env = _environment(services[name])
        assert mounts == {"data": "/data", "models": "/models"}, name
        # The settings point where the volumes are mounted.
        assert (env["TUNESERVE_DATA_DIR"], env["TUNESERVE_MODELS_DIR"]) == ("/data", "/models"), name
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert services["redis"]["volumes"] == ["redisdata:/data"]
    assert "--appendonly" in services["redis"]["command"]
    used = {m.split(":", 1)[0] for s in services.values() for m in s.get("volumes", [])}
    assert used == declared


def test_the_gpu_goes_to_the_worker_and_to_the_api_that_serves_predict(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], name
    assert _environment(services["api"])["TUNESERVE_PREDICT_DEVICE"] == "auto"
    assert "deploy" not in services["migrate"]


def test_every_tuneserve_variable_the_stack_sets_is_a_valid_setting(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    for name in TUNESERVE_SERVICES:
        env = _environment(compose["services"][name])
        ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        assert ours, name
        unknown = sorted(k for k in ours if _setting_name(k) not in fields)
        assert not unknown, f"{name} sets {unknown}, which core/settings.py Settings does not have"
        # And each value parses as that setting's type.
        settings = Settings(_env_file=None, **{_setting_name(k): v for k, v in ours.items()})  # type: ignore[call-arg]
        assert settings.database_url.startswith("postgresql+psycopg://tuneserve:tuneserve@postgres:5432/")
        assert settings.broker_url == "redis://redis:6379/0"
        assert settings.auth is True and settings.auto_migrate is False


def test_env_example_lists_every_setting_and_every_compose_variable(compose: dict[str, Any]) -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.M))
    settings = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    missing = sorted(settings - listed)
    assert not missing, f"add these settings to .env.example (with their default): {missing}"
    stray = sorted(v for v in listed if v.startswith(ENV_PREFIX) and v not in settings | NOT_SETTINGS)
    assert not stray, f".env.example names {stray}, which are not settings"
    substituted = set(SUBSTITUTION.findall(COMPOSE.read_text(encoding="utf-8")))
    assert {name for name, _ in substituted} <= listed
    # The first block is live (compose reads it); the settings are documentation, commented out,
    # so a copied .env does not redirect a local `tuneserve up` to the stack's database.
    assert not re.search(r"^TUNESERVE_", text, flags=re.M)


def test_the_image_ships_what_the_services_run() -> None:
    dockerfile = (ROOT / "Dockerfile.gpu").read_text(encoding="utf-8")
    for copied in ("app", "core", "worker", "migrations", "alembic.ini", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(copied)}\b", dockerfile, flags=re.M), copied
    assert "torch==2.13.0" in dockerfile  # the CUDA build of the release pyproject.toml pins
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
