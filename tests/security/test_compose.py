"""compose.yaml is the production topology: it validates with docker-compose (Debian's package,
installed by `make test`), runs MongoDB as a replica set, Redis, two app replicas behind nginx with
sticky sessions, and coturn, and refuses to start without the secrets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _config(**env: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (`make test` installs it)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMATE_")}
    return subprocess.run([exe, "-f", str(ROOT / "compose.yaml"), "config"], capture_output=True, text=True,
                          env={**clean, **env}, cwd=ROOT, timeout=60)


def test_compose_validates_with_the_production_topology() -> None:
    result = _config(HEALTHMATE_JWT_SECRET="s" * 48, HEALTHMATE_TURN_SECRET="t" * 32)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"mongo", "redis", "app1", "app2", "nginx", "coturn"}
    assert "--replSet" in services["mongo"]["command"]
    assert any("/data/db" in str(v) for v in services["mongo"]["volumes"])
    for name in ("app1", "app2"):
        env = services[name]["environment"]
        assert env["HEALTHMATE_ENV"] == "production"
        assert "replicaSet=rs0" in env["HEALTHMATE_MONGODB_URL"] and env["HEALTHMATE_REDIS_URL"].startswith("redis://")
        assert env["HEALTHMATE_JWT_SECRET"] == "s" * 48
        assert services[name]["depends_on"]["mongo"]["condition"] == "service_healthy"
    for name, service in services.items():
        assert "healthcheck" in service or name == "coturn", name
    assert "--static-auth-secret=" + "t" * 32 in services["coturn"]["command"]


def test_compose_refuses_to_run_without_secrets() -> None:
    result = _config()
    assert result.returncode != 0 and "HEALTHMATE_JWT_SECRET" in result.stderr


def test_nginx_is_sticky_and_passes_websockets() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    upstream = re.search(r"upstream healthmate \{(.*?)\}", conf, re.S)
    assert upstream is not None and "ip_hash;" in upstream.group(1)
    assert {"app1:8080", "app2:8080"} <= set(re.findall(r"server (\S+)", upstream.group(1)))
    assert "proxy_set_header Upgrade $http_upgrade;" in conf


def test_image_ships_every_package() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for package in ("server", "signaling", "media", "devices", "ml", "docs"):
        assert f"COPY {package} ./{package}" in dockerfile, package
