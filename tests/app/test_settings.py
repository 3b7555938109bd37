"""Settings from TUNESERVE_* variables and from the INI or TOML file named by TUNESERVE_CONFIG."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TUNESERVE_* variable from outside, and no .env file in the working directory."""
    for key in list(os.environ):
        if key.startswith("TUNESERVE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_embedded_mode(tmp_path: Path) -> None:
    s = Settings()
    assert s.data_dir == Path("var") and s.models_dir == Path("models_store")
    assert s.database_url == f"sqlite:///{(tmp_path / 'var' / 'tuneserve.sqlite').resolve()}"
    assert s.broker_url == f"sqla+sqlite:///{(tmp_path / 'var' / 'broker.sqlite').resolve()}"
    assert s.auto_migrate is True
    assert s.max_upload_mb == 200 and s.max_upload_bytes == 200 * 1024 * 1024
    assert s.uploads_dir == Path("var/uploads") and s.datasets_dir == Path("var/datasets")


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNESERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TUNESERVE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("TUNESERVE_DATABASE_URL", "postgresql+psycopg://u@db:5432/tuneserve")
    monkeypatch.setenv("TUNESERVE_BROKER_URL", "redis://broker:6379/0")
    monkeypatch.setenv("TUNESERVE_MAX_UPLOAD_MB", "7")
    s = Settings()
    assert s.data_dir == tmp_path / "data" and s.models_dir == tmp_path / "models"
    assert s.database_url == "postgresql+psycopg://u@db:5432/tuneserve"
    assert s.broker_url == "redis://broker:6379/0"
    assert s.auto_migrate is False  # PostgreSQL: compose runs the one-shot migration
    assert s.max_upload_mb == 7 and s.max_upload_bytes == 7 * 1024 * 1024


def test_ini_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.ini"
    config.write_text(
        "[tuneserve]\n"
        f"data_dir = {tmp_path / 'ini-data'}\n"
        "MAX_UPLOAD_MB = 12\n"
        "tuneserve_preview_rows = 3\n"
        "not_a_setting = ignored\n"
        "[other]\nmax_upload_mb = 99\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("TUNESERVE_CONFIG", str(config))
    s = Settings()
    assert s.data_dir == tmp_path / "ini-data"
    assert s.max_upload_mb == 12 and s.preview_rows == 3
    assert s.database_url == f"sqlite:///{(tmp_path / 'ini-data' / 'tuneserve.sqlite').resolve()}"


def test_ini_keeps_percent_escapes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.ini"
    config.write_text("[tuneserve]\ndatabase_url = postgresql+psycopg://u:p%40ss@db/x\n", encoding="utf-8")
    monkeypatch.setenv("TUNESERVE_CONFIG", str(config))
    assert Settings().database_url == "postgresql+psycopg://u:p%40ss@db/x"


def test_ini_without_a_section_header(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.ini"
    config.write_text("max_upload_mb = 5\npreview_rows = 2\n", encoding="utf-8")
    monkeypatch.setenv("TUNESERVE_CONFIG", str(config))
    s = Settings()
    assert (s.max_upload_mb, s.preview_rows) == (5, 2)


def test_environment_beats_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.ini"
    config.write_text("[tuneserve]\nmax_upload_mb = 12\npreview_rows = 3\n", encoding="utf-8")
    monkeypatch.setenv("TUNESERVE_CONFIG", str(config))
    monkeypatch.setenv("TUNESERVE_MAX_UPLOAD_MB", "40")
    s = Settings()
    assert (s.max_upload_mb, s.preview_rows) == (40, 3)
    assert Settings(max_upload_mb=1).max_upload_mb == 1  # constructor arguments beat both


def test_toml_config_file_with_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "tuneserve.toml"
    config.write_text(
        "[tuneserve]\n"
        'database_url = "postgresql+psycopg://u@db/x"\n'
        "max_upload_mb = 33\n"
        "auto_migrate = true\n"
        "TUNESERVE_PREVIEW_ROWS = 4\n"
        "[tuneserve.nested]\nignored = 1\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("TUNESERVE_CONFIG", str(config))
    s = Settings()
    assert s.database_url == "postgresql+psycopg://u@db/x"
    assert (s.max_upload_mb, s.auto_migrate, s.preview_rows) == (33, True, 4)


def test_toml_config_file_top_level(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "tuneserve.toml"
    config.write_text('models_dir = "/srv/models"\npredict_max_batch_size = 8\n', encoding="utf-8")
    monkeypatch.setenv("TUNESERVE_CONFIG", str(config))
    s = Settings()
    assert s.models_dir == Path("/srv/models") and s.predict_max_batch_size == 8


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNESERVE_CONFIG", str(tmp_path / "nope.ini"))
    with pytest.raises(ValueError, match="nope.ini"):
        Settings()


def test_bad_value_in_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.ini"
    config.write_text("[tuneserve]\nmax_upload_mb = lots\n", encoding="utf-8")
    monkeypatch.setenv("TUNESERVE_CONFIG", str(config))
    with pytest.raises(ValueError, match="max_upload_mb"):
        Settings()


def test_a_seed_style_config_ini_names_what_it_ignores_at_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from core.settings import get_settings

    config = tmp_path / "config.ini"
    config.write_text(
        "[Path]\ntrain_file = data/train.tsv\nvalid_file = data/dev.tsv\n"
        "[Hyperparameters]\nmodel = beomi/kcbert-base\nepochs = 3\nbatch_size = 32\n"
        "learning_rate = 2e-5\nmax_length = 128\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("TUNESERVE_CONFIG", str(config))
    get_settings.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="tuneserve.settings"):
            settings = get_settings()
    finally:
        get_settings.cache_clear()
    assert settings.max_upload_mb == 200  # nothing was read, and nothing silently
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "tuneserve.settings"]
    assert str(config) in warning
    assert "[Path] (train_file, valid_file)" in warning
    assert "[Hyperparameters] (model, epochs, batch_size, learning_rate, max_length)" in warning
    assert "hyperparameters (POST /jobs)" in warning


def test_unknown_keys_in_the_tuneserve_section_and_toml_tables_are_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from core.settings import config_file_warnings

    ini = tmp_path / "config.ini"
    ini.write_text("[tuneserve]\nmax_upload_mb = 12\nmax_uplaod_mb = 13\n", encoding="utf-8")
    monkeypatch.setenv("TUNESERVE_CONFIG", str(ini))
    assert Settings().max_upload_mb == 12
    (warning,) = config_file_warnings()
    assert "key 'max_uplaod_mb'" in warning and "max_upload_mb" not in warning.replace("max_uplaod_mb", "")

    toml = tmp_path / "tuneserve.toml"
    toml.write_text("[tuneserve]\npreview_rows = 2\n[tuneserve.nested]\nx = 1\n[worker]\ny = 2\n",
                    encoding="utf-8")
    monkeypatch.setenv("TUNESERVE_CONFIG", str(toml))
    (warning,) = config_file_warnings()
    assert "[worker]" in warning and "[tuneserve.nested]" in warning

    clean = tmp_path / "clean.ini"
    clean.write_text("[tuneserve]\npreview_rows = 2\n", encoding="utf-8")
    monkeypatch.setenv("TUNESERVE_CONFIG", str(clean))
    assert config_file_warnings() == []
