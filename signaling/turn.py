"""Time-limited TURN credentials in coturn's REST-API scheme (``use-auth-secret``): the username is
``<expiry unix time>:<user>`` and the password is base64(HMAC-SHA1(shared secret, username)), so the
TURN server checks them with the shared secret alone and refuses them after the expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac


def turn_credential(secret: str, user: str, expires_at: int) -> tuple[str, str]:
    """``(username, credential)`` valid until ``expires_at`` (unix seconds)."""
    username = f"{int(expires_at)}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()
