"""One key per purpose (RFC 8725): the webhook signing key is never the JWT key, production refuses to
call a webhook without its own key, and a development secret file that others can read, or that is too
short, is refused rather than used (whoever reads it can mint tokens or sign webhooks)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from server.core.config import ConfigError, load_settings

JWT = "j" * 48


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMATE_")}
    return subprocess.run([sys.executable, "-m", "server.cli", "serve"], capture_output=True, text=True, timeout=60,
                          env={**clean, "HEALTHMATE_DATA_DIR": str(tmp_path), "HEALTHMATE_PORT": "0", **env})


def test_production_refuses_a_webhook_without_its_own_key(tmp_path: Path) -> None:
    done = _serve(tmp_path, HEALTHMATE_ENV="production", HEALTHMATE_JWT_SECRET=JWT,
                  HEALTHMATE_EMERGENCY_WEBHOOK_URL="https://sms.example.org/hook")
    assert done.returncode == 2 and "HEALTHMATE_WEBHOOK_SECRET is not set" in done.stderr
    with pytest.raises(ConfigError, match="HEALTHMATE_WEBHOOK_SECRET is not set"):
        load_settings(env="production", jwt_secret=JWT, push_webhook_url="https://push.example.org", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="must differ"):
        load_settings(env="production", jwt_secret=JWT, webhook_secret=JWT, data_dir=tmp_path)
    ok = load_settings(env="production", jwt_secret=JWT, webhook_secret="w" * 40,
                       emergency_webhook_url="https://sms.example.org/hook", data_dir=tmp_path)
    assert ok.signing_secret == "w" * 40 and ok.secret == JWT


def test_development_makes_a_separate_webhook_key(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.signing_secret != settings.secret and len(settings.signing_secret) >= 32
    for name in ("jwt_secret", "webhook_secret"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert load_settings(data_dir=tmp_path).signing_secret == settings.signing_secret


@pytest.mark.parametrize("name", ["jwt_secret", "webhook_secret"])
def test_a_secret_file_others_can_read_stops_the_server(tmp_path: Path, name: str) -> None:
    load_settings(data_dir=tmp_path)
    (tmp_path / name).chmod(0o644)
    done = _serve(tmp_path)
    assert done.returncode == 2 and "chmod 600" in done.stderr, done.stderr[-500:]
    (tmp_path / name).chmod(0o600)
    (tmp_path / name).write_text("short")
    with pytest.raises(ConfigError, match="under 32 characters"):
        load_settings(data_dir=tmp_path)
