"""compose.yaml as an operator deploys it (issue 14, item 10). Each test reads what `docker-compose config`
renders (Debian's docker-compose, installed by `make test`; there is no Docker engine here) and the files under
deploy/ that the services mount, read as the services read them (nginx.conf with nginx's parser, crossplane).
Where the real program is on this machine (Redis, Mosquitto, openssl) it is run with the rendered command or
the shipped configuration, and the attack is made against it:

- nginx terminates TLS (certificate pair from files), sends HTTP to HTTPS with HSTS, appends the client address
  to X-Forwarded-For (the app trusts that last entry), and stays sticky with websockets passed through;
- MongoDB runs with a keyfile (authentication on) and the app connects as its own user; Redis wants a password
  (a client without it is refused); both, and Mosquitto's bridge listener, are only on an internal network and
  publish no port;
- coturn refuses to relay to loopback, private and special-purpose addresses (the other services among them)
  and does not relay TCP;
- Mosquitto takes devices over TLS only, with the passwd and ACL files the server writes: a revoked device is
  refused once the server rewrites them;
- nothing renders without each secret, and the webhook secret is its own, not the JWT secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiomqtt
import crossplane
import pytest
import yaml
from cryptography import x509
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError
from redis.retry import Retry

from devices.mqtt_broker import BrokerFiles, mosquitto_hash
from server.infra.embedded_store import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRET_NAMES = ("JWT_SECRET", "WEBHOOK_SECRET", "TURN_SECRET", "MONGO_ROOT_PASSWORD", "MONGO_PASSWORD",
                "REDIS_PASSWORD", "MQTT_BRIDGE_PASSWORD")
SECRETS = {f"HEALTHMATE_{name}": secrets.token_hex(24) for name in SECRET_NAMES}
APPS = ("app1", "app2")
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _compose(env: dict[str, str], env_file: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with these variables and this env file (an explicit one, so that a .env left in
    the checkout by deploy/make-secrets.sh cannot fill in what a test leaves out)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed; `make test` installs it (apt-get install docker-compose)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMATE_")}
    return subprocess.run([exe, "--env-file", str(env_file), "-f", str(ROOT / "compose.yaml"), "config"],
                          capture_output=True, text=True, env={**clean, **env}, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def no_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def config(no_env_file: Path) -> dict[str, Any]:
    """compose.yaml as docker-compose renders it with every secret set (each to its own value)."""
    result = _compose(SECRETS, no_env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _mount(service: dict[str, Any], target: str) -> tuple[str, str]:
    """(source, mode) of the volume mounted at ``target``."""
    for volume in service.get("volumes", []):
        source, dest, *mode = str(volume).split(":")
        if dest == target:
            return source, (mode[0] if mode else "rw")
    raise AssertionError(f"nothing mounted at {target}: {service.get('volumes')}")


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


def _published(service: dict[str, Any]) -> set[int]:
    return {int(p["published"]) for p in service.get("ports", [])}


# --- the topology and its secrets -------------------------------------------------------------------------


def test_compose_validates_with_the_production_topology(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"mongo-keyfile", "mongo", "redis", "app1", "app2", "nginx", "mosquitto", "coturn"}
    assert "--replSet" in services["mongo"]["command"]
    assert _mount(services["mongo"], "/data/db")[0] == "mongo-data"
    for name in APPS:
        env = _env(services[name])
        assert env["HEALTHMATE_ENV"] == "production"
        assert env["HEALTHMATE_JWT_SECRET"] == SECRETS["HEALTHMATE_JWT_SECRET"]
        assert env["HEALTHMATE_TURN_SECRET"] == SECRETS["HEALTHMATE_TURN_SECRET"]
        assert services[name]["depends_on"]["mongo"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    # Long-running services report their health, except those no other service waits on.
    for name, service in services.items():
        assert "healthcheck" in service or name in ("coturn", "mosquitto", "mongo-keyfile"), name


@pytest.mark.parametrize("missing", [*sorted(SECRETS), "HEALTHMATE_WEBHOOK_SECRET="])
def test_compose_refuses_to_render_without_each_secret(missing: str, no_env_file: Path) -> None:
    """Unset (or, the last case, set to nothing): docker-compose stops and names it."""
    name, empty, _ = missing.partition("=")
    env = {k: v for k, v in SECRETS.items() if k != name} | ({name: ""} if empty else {})
    result = _compose(env, no_env_file)
    assert result.returncode != 0 and name in result.stderr, result.stderr


def test_the_webhook_secret_is_required_and_not_the_jwt_secret(config: dict[str, Any]) -> None:
    for name in APPS:
        env = _env(config["services"][name])
        assert env["HEALTHMATE_WEBHOOK_SECRET"] == SECRETS["HEALTHMATE_WEBHOOK_SECRET"]
        assert env["HEALTHMATE_WEBHOOK_SECRET"] != env["HEALTHMATE_JWT_SECRET"]


def test_make_secrets_writes_every_secret_once_privately(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    subprocess.run([str(DEPLOY / "make-secrets.sh"), str(env_file)], check=True, capture_output=True)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if not line.startswith("#"))
    assert set(values) == set(SECRETS)
    assert len(set(values.values())) == len(values) and all(len(v) >= 32 for v in values.values())
    # The file alone (no environment) renders: it covers every secret compose.yaml requires.
    result = _compose({}, env_file)
    assert result.returncode == 0, result.stderr
    app = _env(yaml.safe_load(result.stdout)["services"]["app1"])
    assert app["HEALTHMATE_WEBHOOK_SECRET"] == values["HEALTHMATE_WEBHOOK_SECRET"] != app["HEALTHMATE_JWT_SECRET"]
    # Never overwritten: secrets in use are not replaced by a second run.
    before = env_file.read_text()
    again = subprocess.run([str(DEPLOY / "make-secrets.sh"), str(env_file)], capture_output=True, text=True)
    assert again.returncode != 0 and "exists" in again.stderr and env_file.read_text() == before


# --- nginx: TLS, HSTS, the client address, stickiness ------------------------------------------------------


def _nginx() -> list[dict[str, Any]]:
    parsed = crossplane.parse(str(DEPLOY / "nginx.conf"), single=True, comments=False)
    assert parsed["status"] == "ok", parsed["errors"]
    top = parsed["config"][0]["parsed"]
    return _block(top, "http")[0]


def _block(block: list[dict[str, Any]], name: str) -> list[list[dict[str, Any]]]:
    return [d["block"] for d in block if d["directive"] == name]


def _args(block: list[dict[str, Any]], name: str) -> list[list[str]]:
    return [d["args"] for d in block if d["directive"] == name]


def _proxy_headers(*levels: list[dict[str, Any]]) -> dict[str, str]:
    """The headers nginx sends upstream: the innermost level that sets any replaces all outer ones."""
    for level in reversed(levels):
        if sets := _args(level, "proxy_set_header"):
            return {name.lower(): value for name, value in sets}
    return {}


def test_nginx_terminates_tls_from_files_and_redirects_http(config: dict[str, Any]) -> None:
    nginx = config["services"]["nginx"]
    assert _published(nginx) == {80, 443}
    tls_dir, mode = _mount(nginx, "/etc/nginx/tls")
    assert mode == "ro" and tls_dir == str(DEPLOY / "tls")  # where deploy/make-trial-cert.sh writes
    assert _mount(nginx, "/etc/nginx/nginx.conf") == (str(DEPLOY / "nginx.conf"), "ro")
    servers = _block(_nginx(), "server")
    by_listen = {tuple(args): server for server in servers for args in _args(server, "listen")}
    assert set(by_listen) == {("80",), ("443", "ssl"), ("127.0.0.1:8081",)}

    https = by_listen[("443", "ssl")]
    assert _args(https, "ssl_certificate") == [["/etc/nginx/tls/fullchain.pem"]]
    assert _args(https, "ssl_certificate_key") == [["/etc/nginx/tls/privkey.pem"]]
    assert set(_args(https, "ssl_protocols")[0]) <= {"TLSv1.2", "TLSv1.3"}
    hsts = [args for args in _args(https, "add_header") if args[0].lower() == "strict-transport-security"]
    assert len(hsts) == 1 and hsts[0][2:] == ["always"]
    assert int(re.fullmatch(r"max-age=(\d+).*", hsts[0][1]).group(1)) >= 365 * 86400  # type: ignore[union-attr]
    assert _args(https, "proxy_hide_header") == [["Strict-Transport-Security"]]  # one header, not the app's too
    for location in _block(https, "location"):  # an add_header or proxy_hide_header there would drop these
        assert not _args(location, "add_header") and not _args(location, "proxy_hide_header")

    plain = by_listen[("80",)]
    assert [d["directive"] for d in plain] == ["listen", "return"]
    assert _args(plain, "return") == [["301", "https://$host$request_uri"]]
    # The healthcheck's server is on the container's loopback only, and nginx publishes no 8081.
    assert config["services"]["nginx"]["healthcheck"]["test"][-1] == "http://127.0.0.1:8081/healthz"


def test_nginx_is_sticky_passes_websockets_and_appends_the_client_address(config: dict[str, Any]) -> None:
    http = _nginx()
    upstream = next(d for d in http if d["directive"] == "upstream" and d["args"] == ["healthmate"])["block"]
    assert _args(upstream, "ip_hash") == [[]]
    assert {args[0] for args in _args(upstream, "server")} == {f"{name}:8080" for name in APPS}
    https = next(s for s in _block(http, "server") if ["443", "ssl"] in _args(s, "listen"))
    locations = {tuple(d["args"]): d["block"] for d in https if d["directive"] == "location"}
    assert set(locations) == {("/socket.io/",), ("/",)}
    for path, location in locations.items():
        assert _args(location, "proxy_pass") == [["http://healthmate"]], path
        headers = _proxy_headers(http, https, location)
        # The app (HEALTHMATE_TRUST_FORWARDED) trusts the LAST entry: it must be the one nginx appends.
        assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for", path
        assert headers["x-forwarded-proto"] == "$scheme", path
        assert headers["upgrade"] == "$http_upgrade" and headers["connection"] == "$connection_upgrade", path
    assert _args(locations[("/socket.io/",)], "proxy_buffering") == [["off"]]
    for name in APPS:
        assert _env(config["services"][name])["HEALTHMATE_TRUST_FORWARDED"] == "true"


def test_trial_cert_script_makes_a_matching_private_pair(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    for host, name in (("health.example.org", x509.DNSName("health.example.org")),
                       ("203.0.113.7", x509.IPAddress(ipaddress.ip_address("203.0.113.7")))):
        subprocess.run([str(DEPLOY / "make-trial-cert.sh"), host, str(folder)], check=True, capture_output=True)
        cert, key = folder / "fullchain.pem", folder / "privkey.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)  # raises unless they match
        san = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        assert name in san and x509.DNSName("localhost") in san
        before = cert.read_bytes()
        again = subprocess.run([str(DEPLOY / "make-trial-cert.sh"), host, str(folder)], capture_output=True,
                               text=True)
        assert again.returncode != 0 and "already" in again.stderr and cert.read_bytes() == before
        shutil.rmtree(folder)


# --- MongoDB and Redis: authentication, internal network only ----------------------------------------------


def test_mongo_runs_with_a_keyfile_and_the_app_has_its_own_user(config: dict[str, Any]) -> None:
    services = config["services"]
    mongo, keyfile = services["mongo"], services["mongo-keyfile"]
    command = mongo["command"]
    assert "--noauth" not in command
    key_path = Path(command[command.index("--keyFile") + 1])  # a keyfile turns authentication on
    volume, mode = _mount(mongo, str(key_path.parent))
    assert mode == "ro" and volume == "mongo-keyfile"
    # The keyfile is made before mongod starts, by deploy/make-mongo-keyfile.sh into that same volume.
    assert mongo["depends_on"]["mongo-keyfile"]["condition"] == "service_completed_successfully"
    script, key_in_maker, owner = keyfile["entrypoint"][1:]
    assert _mount(keyfile, script)[0] == str(DEPLOY / "make-mongo-keyfile.sh") and owner == "mongodb"
    assert _mount(keyfile, str(Path(key_in_maker).parent))[0] == volume
    assert Path(key_in_maker).name == key_path.name
    assert keyfile["network_mode"] == "none"

    env = _env(mongo)
    assert env["MONGO_INITDB_ROOT_USERNAME"] == "root"
    assert env["MONGO_INITDB_ROOT_PASSWORD"] == SECRETS["HEALTHMATE_MONGO_ROOT_PASSWORD"]
    assert env["HEALTHMATE_MONGO_PASSWORD"] == SECRETS["HEALTHMATE_MONGO_PASSWORD"]
    init = _mount(mongo, "/docker-entrypoint-initdb.d/healthmate-user.js")
    assert init == (str(DEPLOY / "mongo-init.js"), "ro")
    script_text = (DEPLOY / "mongo-init.js").read_text()
    assert "process.env.HEALTHMATE_MONGO_PASSWORD" in script_text
    user = re.search(r'getSiblingDB\("(\w+)"\)\.createUser\(\{\s*user: "([\w-]+)"', script_text)
    assert user is not None
    assert re.search(r'roles: \[\{ role: "readWrite", db: "healthmate" \}\]', script_text)

    for name in APPS:
        url = urlsplit(_env(services[name])["HEALTHMATE_MONGODB_URL"])
        query = parse_qs(url.query)
        assert (url.username, url.password) == (user.group(2), SECRETS["HEALTHMATE_MONGO_PASSWORD"])
        assert url.hostname == "mongo" and query["authSource"] == [user.group(1)] and query["replicaSet"] == ["rs0"]
    # The healthcheck (which initiates the replica set) logs in as root; it reads the password in the container.
    assert "-u root -p \"$$MONGO_INITDB_ROOT_PASSWORD\"" in mongo["healthcheck"]["test"][1]


def test_mongo_keyfile_script_makes_one_private_key_and_keeps_it(tmp_path: Path) -> None:
    key = tmp_path / "keyfile"
    make = ["sh", str(DEPLOY / "make-mongo-keyfile.sh"), str(key), getpass.getuser()]
    subprocess.run(make, check=True, capture_output=True)
    first = key.read_text()
    assert re.fullmatch(r"[A-Za-z0-9+/=]{6,1024}", first)  # mongod's keyfile alphabet and length
    subprocess.run(make, check=True, capture_output=True)  # a restart keeps the replica set's key
    assert key.read_text() == first and stat.S_IMODE(key.stat().st_mode) == 0o400


def test_redis_refuses_clients_without_the_password(config: dict[str, Any], tmp_path: Path) -> None:
    redis = config["services"]["redis"]
    command = redis["command"]
    password = command[command.index("--requirepass") + 1]
    assert password == SECRETS["HEALTHMATE_REDIS_PASSWORD"] == _env(redis)["REDISCLI_AUTH"]  # the healthcheck's
    urls = {_env(config["services"][name])["HEALTHMATE_REDIS_URL"] for name in APPS}
    assert urls == {f"redis://:{password}@redis:6379/0"}

    # The rendered command, run: a client without the password is refused, the app's URL gets in.
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; `make test` installs it")
    port = free_port()
    proc = subprocess.Popen([exe, *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        app = Redis.from_url(urls.pop().replace("@redis:6379", f"@127.0.0.1:{port}"))
        _until(lambda: _pings(app))
        once = Retry(NoBackoff(), 0)  # a refused login is an answer, not something to retry
        with pytest.raises(AuthenticationError):
            Redis(port=port, retry=once).set("healthmate:probe", "x")
        with pytest.raises(AuthenticationError):
            Redis(port=port, password="guess", retry=once).ping()
        assert app.set("healthmate:probe", "x") and app.get("healthmate:probe") == b"x"
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(client: Redis) -> bool:
    with contextlib.suppress(Exception):
        return bool(client.ping())
    return False


def _until(check: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


def test_stores_are_only_on_the_internal_network(config: dict[str, Any]) -> None:
    services, networks = config["services"], config["networks"]
    internal = {name for name, net in networks.items() if (net or {}).get("internal")}
    assert internal == {"backend"}
    on = {name: set(service.get("networks", {})) for name, service in services.items()}
    assert on["mongo"] == on["redis"] == {"backend"}
    assert {name for name, nets in on.items() if "backend" in nets} == {"mongo", "redis", "mosquitto", *APPS}
    # Published ports: the web (nginx), MQTT over TLS and TURN; never MongoDB, Redis or the bridge's listener.
    assert {name for name, service in services.items() if service.get("ports")} == {"nginx", "mosquitto", "coturn"}
    assert _published(services["mosquitto"]) == {8883}
    for name in ("mongo", "redis", "mongo-keyfile"):
        assert not services[name].get("ports") and not services[name].get("expose"), name


# --- coturn: no relaying to loopback, private or special-purpose addresses ----------------------------------


def _coturn_conf() -> list[tuple[str, str]]:
    options = []
    for line in (DEPLOY / "turnserver.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            options.append((key.strip(), value.strip()))
    return options


def _ranges(values: list[str]) -> list[tuple[int, int, int]]:
    """(version, first, last) of each ``A`` or ``A-B`` coturn range."""
    out = []
    for value in values:
        first, _, last = value.partition("-")
        a, b = ipaddress.ip_address(first), ipaddress.ip_address(last or first)
        assert a.version == b.version and int(a) <= int(b), value
        out.append((a.version, int(a), int(b)))
    return out


def _covered(net: Net, ranges: list[tuple[int, int, int]]) -> bool:
    return any(v == net.version and lo <= int(net[0]) and int(net[-1]) <= hi for v, lo, hi in ranges)


MUST_DENY = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
             "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
             "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96",
             "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8"]


def test_coturn_relays_to_no_private_or_loopback_address(config: dict[str, Any]) -> None:
    coturn = config["services"]["coturn"]
    command = coturn["command"]
    assert "-n" not in command  # -n would make coturn ignore its configuration file
    conf_path = command[command.index("-c") + 1]
    assert _mount(coturn, conf_path) == (str(DEPLOY / "turnserver.conf"), "ro")
    assert f"--static-auth-secret={SECRETS['HEALTHMATE_TURN_SECRET']}" in command

    options = _coturn_conf()
    keys = {key for key, _ in options}
    assert {"use-auth-secret", "no-tcp-relay", "no-multicast-peers", "no-cli"} <= keys
    assert not keys & {"allowed-peer-ip", "allow-loopback-peers", "no-auth", "lt-cred-mech"}
    denied = _ranges([value for key, value in options if key == "denied-peer-ip"])
    missing = [net for net in MUST_DENY if not _covered(ipaddress.ip_network(net), denied)]
    assert not missing, f"coturn would relay to {missing}"
    # The other services: Docker puts compose networks in 172.17.0.0/16-172.31.0.0/16 or 192.168.0.0/16 (or
    # 10.0.0.0/8 if the daemon is configured so); a subnet compose.yaml pins must be denied as well.
    for name, net in config["networks"].items():
        for pool in ((net or {}).get("ipam") or {}).get("config", []):
            assert _covered(ipaddress.ip_network(pool["subnet"]), denied), name
    # And it shares no network with them: what it could reach, it reaches only through the host.
    others = {n for name, s in config["services"].items() if name != "coturn" for n in s.get("networks", {})}
    assert set(coturn["networks"]).isdisjoint(others)


def test_coturn_denied_ranges_let_public_peers_through() -> None:
    """The denials are not 'everything': calls still relay to the peers' public addresses."""
    denied = _ranges([value for key, value in _coturn_conf() if key == "denied-peer-ip"])
    for public in ("8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2a00:1450:4001::1"):
        assert not _covered(ipaddress.ip_network(public), denied), public


# --- Mosquitto: TLS for devices, the server's passwd and ACL ------------------------------------------------


def _mosquitto_conf(text: str) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
    """Options before the first ``listener`` line, and each listener's own (keyed by port)."""
    general: dict[str, str] = {}
    listeners: dict[int, dict[str, str]] = {}
    current = general
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            current = listeners.setdefault(int(value.split()[0]), {})
        else:
            assert key not in current, f"{key} repeated"
            current[key] = value.strip()
    return general, listeners


def _script_defaults() -> dict[str, str]:
    """The container paths deploy/mosquitto-run.sh uses unless told otherwise."""
    text = (DEPLOY / "mosquitto-run.sh").read_text()
    return dict(re.findall(r'^\w+="\$\{(\w+):-([^}]+)\}"', text, re.M))


def test_mosquitto_takes_devices_over_tls_with_the_servers_acl(config: dict[str, Any]) -> None:
    services = config["services"]
    mosquitto = services["mosquitto"]
    general, listeners = _mosquitto_conf((DEPLOY / "mosquitto.conf").read_text())
    assert general["allow_anonymous"] == "false" and general["per_listener_settings"] == "false"
    assert set(listeners) == {1883, 8883}
    tls = listeners[8883]
    assert tls["certfile"] == "/mosquitto/tls/fullchain.pem" and tls["keyfile"] == "/mosquitto/tls/privkey.pem"
    assert tls["tls_version"] in ("tlsv1.2", "tlsv1.3")
    assert not {"certfile", "keyfile"} & set(listeners[1883])  # the bridge's: internal network only, not published
    assert _published(mosquitto) == {8883}
    assert general["password_file"] == "/mosquitto/auth/passwd" and general["acl_file"] == "/mosquitto/auth/acl"

    # The run script copies from where compose mounts the server's files and the TLS pair, to where the
    # configuration reads them.
    defaults = _script_defaults()
    assert mosquitto["entrypoint"] == ["sh", "/healthmate/mosquitto-run.sh"]
    assert _mount(mosquitto, "/healthmate/mosquitto-run.sh") == (str(DEPLOY / "mosquitto-run.sh"), "ro")
    assert _mount(mosquitto, defaults["MOSQUITTO_CONF"]) == (str(DEPLOY / "mosquitto.conf"), "ro")
    assert _mount(mosquitto, defaults["HEALTHMATE_TLS_DIR"]) == (str(DEPLOY / "tls"), "ro")
    assert defaults["MOSQUITTO_DIR"] == "/mosquitto"
    shared, mode = _mount(mosquitto, defaults["HEALTHMATE_MQTT_BROKER_DIR"])
    assert mode == "ro"

    # One replica, app1, keeps the passwd and acl files, in the volume the broker reads.
    app1 = services["app1"]
    broker_dir = _env(app1)["HEALTHMATE_MQTT_BROKER_DIR"]
    assert _mount(app1, broker_dir) == (shared, "rw")
    assert "HEALTHMATE_MQTT_BROKER_DIR" not in _env(services["app2"])
    assert re.search(rf"chown healthmate [^\n]*{re.escape(broker_dir)}", (DEPLOY / "Dockerfile").read_text())
    bridge = SECRETS["HEALTHMATE_MQTT_BRIDGE_PASSWORD"]
    for name in APPS:
        assert _env(services[name])["HEALTHMATE_MQTT_URL"] == f"mqtt://healthmate-bridge:{bridge}@mosquitto:1883"


async def _login(port: int, user: str | None, password: str | None, ca: Path | None) -> str:
    """'ok' if the broker accepts the connection, else why not."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        async with aiomqtt.Client("127.0.0.1", port, username=user, password=password, tls_context=context,
                                  identifier=f"test-{secrets.token_hex(4)}", timeout=5):
            return "ok"
    except aiomqtt.MqttError as exc:
        return str(exc) or type(exc).__name__


async def _eventually(check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.1)


@pytest.fixture
def broker_run(tmp_path: Path) -> Iterator[tuple[dict[str, Path], int, int, subprocess.Popen[bytes]]]:
    """deploy/mosquitto-run.sh with deploy/mosquitto.conf, its container paths moved under tmp_path, its two
    listeners on loopback ports, the trial certificate from deploy/make-trial-cert.sh."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        pytest.fail("mosquitto is not installed; `make test` installs it (apt-get install mosquitto)")
    paths = {name: tmp_path / name for name in ("src", "tls", "base")}
    subprocess.run([str(DEPLOY / "make-trial-cert.sh"), "localhost", str(paths["tls"])], check=True,
                   capture_output=True)
    plain, tls = free_port(), free_port()
    user = getpass.getuser()
    conf = (DEPLOY / "mosquitto.conf").read_text().replace("/mosquitto/", f"{paths['base']}/")
    conf = conf.replace("listener 1883", f"listener {plain} 127.0.0.1").replace("listener 8883",
                                                                                f"listener {tls} 127.0.0.1")
    conf = conf.replace("user mosquitto", f"user {user}")
    (tmp_path / "mosquitto.conf").write_text(conf)
    env = {"PATH": f"{Path(exe).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HEALTHMATE_MQTT_BROKER_DIR": str(paths["src"]), "HEALTHMATE_TLS_DIR": str(paths["tls"]),
           "MOSQUITTO_DIR": str(paths["base"]), "MOSQUITTO_CONF": str(tmp_path / "mosquitto.conf"),
           "MOSQUITTO_USER": user, "MOSQUITTO_RELOAD_S": "0.2"}
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(["sh", str(DEPLOY / "mosquitto-run.sh")], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield paths, plain, tls, proc
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """Stops the script as Docker stops a container (SIGTERM to its first process); its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_mosquitto_serves_devices_over_tls_and_drops_a_revoked_one(
        broker_run: tuple[dict[str, Path], int, int, subprocess.Popen[bytes]]) -> None:
    paths, plain, tls, proc = broker_run
    ca = paths["tls"] / "fullchain.pem"
    bridge_password, device_id, credential = secrets.token_hex(16), "65f0c0ffee0000000000beef", secrets.token_hex(32)
    files = BrokerFiles(paths["src"], "healthmate-bridge", bridge_password)

    # Until the server has written the files the broker does not start (it would have no users).
    await asyncio.sleep(0.5)
    assert proc.poll() is None and await _login(tls, device_id, credential, ca) != "ok"
    files.write([(device_id, mosquitto_hash(credential))])

    async def device_gets_in() -> bool:
        return await _login(tls, device_id, credential, ca) == "ok"

    await _eventually(device_gets_in)
    # Copies readable by the broker's user only, whatever the modes of the originals.
    for folder in ("auth", "tls"):
        for path in (paths["base"] / folder).iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    # The attacks: no TLS on the devices' port, no login, a wrong password, another device's name.
    assert await _login(tls, device_id, credential, None) != "ok"
    assert await _login(tls, None, None, ca) != "ok"
    assert await _login(tls, device_id, "guess", ca) != "ok"
    assert await _login(tls, "another-device", credential, ca) != "ok"
    assert await _login(plain, None, None, None) != "ok"
    assert await _login(plain, "healthmate-bridge", bridge_password, None) == "ok"  # the bridge's listener

    # Revoked: the server rewrites the files without the device; the script reloads the broker, which
    # drops the device's open connection and refuses it from then on.
    async with aiomqtt.Client("127.0.0.1", tls, username=device_id, password=credential, timeout=5,
                              tls_context=ssl.create_default_context(cafile=str(ca))) as connected:
        await connected.publish(f"healthmate/devices/{device_id}/up/heartbeat", b"{}", qos=1)
        files.write([])

        async def dropped() -> bool:
            try:
                await connected.publish(f"healthmate/devices/{device_id}/up/heartbeat", b"{}", qos=1, timeout=2)
            except aiomqtt.MqttError:
                return True
            return False

        await _eventually(dropped)
    assert await _login(tls, device_id, credential, ca) != "ok"
    assert await _login(plain, "healthmate-bridge", bridge_password, None) == "ok"

    # Stopping the container stops the broker too (the script passes SIGTERM on), leaving nothing behind.
    assert _stop(proc) == 0 and not _listening(tls) and not _listening(plain)


def test_image_ships_every_package() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for package in ("server", "signaling", "media", "devices", "ml", "docs"):
        assert f"COPY {package} ./{package}" in dockerfile, package
