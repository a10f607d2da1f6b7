"""The MQTT broker's credentials and topic ACLs, kept by the server when it manages a Mosquitto broker.

With ``HEALTHMATE_MQTT_BROKER_DIR`` set, the server writes there, from the store:

- ``passwd``: Mosquitto's ``password_file``: the bridge user (from ``HEALTHMATE_MQTT_URL``) and one
  line per active paired device, user name = the device id, password = the device credential, hashed
  as ``mosquitto_passwd`` does (``$7$``: PBKDF2-SHA512). The hash is computed when the device is
  paired (the only moment the credential is known) and kept on the device.
- ``acl``: Mosquitto's ``acl_file``: the bridge may use all of ``healthmate/#``; every device
  may publish only under ``healthmate/devices/<its id>/up/#`` and read only ``.../<its id>/down/#``.

and sends SIGHUP to the broker whose pid is in ``mosquitto.pid`` in the same folder, so it reloads
both, whenever a device is paired or revoked (in any process: the control bus tells them) and at start.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import signal
from pathlib import Path

from devices.documents import Device
from server.infra.pubsub import ControlBus

log = logging.getLogger(__name__)
TOPIC_ROOT = "healthmate/devices"
PBKDF2_ROUNDS = 101  # mosquitto_passwd's default; the device secrets are 256 random bits, not passwords
ACL = f"""# Managed by Health Mate: rewritten whenever a device is paired or revoked. Do not edit.
user {{bridge}}
topic readwrite healthmate/#

# Every device (user name = its id) publishes only under its own topic and reads only its own commands.
pattern write {TOPIC_ROOT}/%u/up/#
pattern read {TOPIC_ROOT}/%u/down/#
"""


def mosquitto_hash(password: str, rounds: int = PBKDF2_ROUNDS) -> str:
    """A ``password_file`` hash in Mosquitto 2's PBKDF2-SHA512 format (``$7$rounds$salt$hash``)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds, 64)
    return f"$7${rounds}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class BrokerFiles:
    def __init__(self, folder: Path, bridge_user: str, bridge_password: str) -> None:
        self.folder = folder
        self.bridge_user = bridge_user
        self.bridge_hash = mosquitto_hash(bridge_password)
        self.passwd, self.acl, self.pid_file = folder / "passwd", folder / "acl", folder / "mosquitto.pid"

    def write(self, devices: list[tuple[str, str]]) -> None:
        """Write both files atomically; ``devices`` are ``(device id, mosquitto hash)`` pairs."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = [f"{self.bridge_user}:{self.bridge_hash}", *(f"{did}:{h}" for did, h in devices)]
        _replace(self.passwd, "\n".join(lines) + "\n")
        _replace(self.acl, ACL.format(bridge=self.bridge_user))

    def reload(self) -> bool:
        """Ask the broker to re-read the files (SIGHUP); False if it is not running here."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            log.warning("could not signal the MQTT broker to reload (%s): %s", self.pid_file, exc)
            return False
        return True

    async def sync(self) -> int:
        """Rewrite the files from the store's active devices and reload the broker; how many devices."""
        active = Device.find(Device.revoked_at == None, Device.mqtt_hash != None)  # noqa: E711
        devices = [(str(d.id), d.mqtt_hash) async for d in active if d.mqtt_hash]
        self.write(devices)
        self.reload()
        return len(devices)

    async def start(self) -> None:
        count = await self.sync()
        log.info("MQTT broker files in %s: %d devices", self.folder, count)

    async def stop(self) -> None:
        """Nothing to stop: the files stay for the broker."""

    def follow(self, bus: ControlBus) -> None:
        """Keep the files in step with pairings and revocations made in any process."""

        async def _changed(_: dict[str, object]) -> None:
            await self.sync()

        bus.on("device_paired", _changed)
        bus.on("device_revoked", _changed)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
