"""The ICE servers a caller's browser is given: the STUN servers, and the TURN servers with
time-limited credentials in coturn's REST-API scheme (``use-auth-secret``): the username is
``<expiry unix time>:<user>`` and the password is base64(HMAC-SHA1(shared secret, username)), so the
TURN server checks them with the shared secret alone and refuses them after the expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from server.core.config import Settings


def turn_credential(secret: str, user: str, expires_at: int) -> tuple[str, str]:
    """``(username, credential)`` valid until ``expires_at`` (unix seconds)."""
    username = f"{int(expires_at)}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(settings: Settings, user_id: str, now: float) -> dict[str, Any]:
    """The ``RTCPeerConnection`` ``iceServers`` for ``user_id``, and how long the credential lasts."""
    servers: list[dict[str, Any]] = []
    if settings.stun_urls:
        servers.append({"urls": settings.stun_urls})
    expires = int(now) + settings.turn_ttl_s
    if settings.turn_urls and settings.turn_secret is not None:
        username, credential = turn_credential(settings.turn_secret.get_secret_value(), user_id, expires)
        servers.append({"urls": settings.turn_urls, "username": username, "credential": credential})
    return {"ice_servers": servers, "ttl_s": settings.turn_ttl_s, "expires_at": expires}
