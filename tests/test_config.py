"""Configuration: no usable secret default in production; a development secret made once and kept."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.core.config import ConfigError, load_settings


def test_production_without_secret_refuses(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HEALTHMATE_JWT_SECRET"):
        load_settings(env="production", data_dir=tmp_path)
    assert not (tmp_path / "jwt_secret").exists()


def test_cli_stops_with_clear_message_in_production(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMATE_")}
    env.update(HEALTHMATE_ENV="production", HEALTHMATE_DATA_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "server.cli", "serve"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "HEALTHMATE_JWT_SECRET is not set" in done.stderr


def test_short_secret_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        load_settings(env="production", jwt_secret="short", data_dir=tmp_path)


def test_development_secret_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_settings(data_dir=tmp_path)
    path = tmp_path / "jwt_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.secret) >= 32
    assert load_settings(data_dir=tmp_path).secret == first.secret
    assert load_settings(data_dir=tmp_path / "elsewhere").secret != first.secret


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEALTHMATE_PORT", "9123")
    monkeypatch.setenv("HEALTHMATE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("HEALTHMATE_DATA_DIR", str(tmp_path))
    s = load_settings()
    assert s.port == 9123 and s.redis_url == "redis://127.0.0.1:1/0" and s.data_dir == tmp_path


def test_processes_starting_together_make_one_development_secret(tmp_path: Path) -> None:
    """Two workers starting at once on a fresh data folder: each gets the one secret kept there, none fails (one
    of them used to stop on the file the other had just made, or read it still empty)."""
    barrier = threading.Barrier(8)

    def start() -> tuple[str, str]:
        barrier.wait()
        settings = load_settings(data_dir=tmp_path)
        return settings.secret, settings.signing_secret

    with ThreadPoolExecutor(8) as pool:
        secrets = list(pool.map(lambda _: start(), range(8)))
    assert len(set(secrets)) == 1
    assert (tmp_path / "jwt_secret").read_text() == secrets[0][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jwt_secret", "webhook_secret"]  # no temporary left
