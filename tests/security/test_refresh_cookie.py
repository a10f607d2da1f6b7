"""The refresh token out of a script's reach. A script injected into the dashboard (or any script on the
page) looks for tokens where the page used to keep them: sessionStorage (then), localStorage, document.cookie.
Now the dashboard asks for the refresh token as an HttpOnly; Secure; SameSite=Strict cookie scoped to
/api/auth, keeps the access token in memory only, and signs in again after a reload with the cookie. The
cookie's refresh token rotates and its reuse ends the session, as in the body; logging out clears it. A
clinician's account made from an invitation starts the same way."""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

import aiohttp

from server.app import SERVER
from tests.browser import chromium, sign_in
from tests.helpers import PASSWORD, Api

COOKIE = "hm_refresh"


async def _post(api: Api, path: str, body: Any, cookie: str | None = None,
                token: str | None = None) -> tuple[int, Any, SimpleCookie]:
    headers = {**({"Cookie": f"{COOKIE}={cookie}"} if cookie else {}),
               **({"Authorization": f"Bearer {token}"} if token else {})}
    # A session with no cookie jar: the test says exactly which cookie each request carries.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http, \
            http.post(api.base_url + path, json=body, headers=headers) as resp:
        set_cookie: SimpleCookie = SimpleCookie()
        for header in resp.headers.getall("Set-Cookie", []):
            set_cookie.load(header)
        return resp.status, (await resp.json() if resp.status != 204 else None), set_cookie


async def test_login_and_refresh_put_the_refresh_token_in_a_cookie_scripts_cannot_read(api: Api) -> None:
    user = await api.register("clinician")
    status, body, jar = await _post(api, "/api/auth/login", {"email": user.email, "password": PASSWORD,
                                                             "cookie": True})
    assert status == 200 and body["access_token"] and "refresh_token" not in body
    cookie = jar[COOKIE]
    assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Strict"
    ttl_s = api.app[SERVER].settings.refresh_token_ttl_s  # type: ignore[index]
    assert cookie["path"] == "/api/auth" and int(cookie["max-age"]) == ttl_s
    # The refresh takes the cookie (no token in the body) and answers with a new one in the cookie.
    status, pair, jar2 = await _post(api, "/api/auth/refresh", {}, cookie=cookie.value)
    assert status == 200 and pair["access_token"] and "refresh_token" not in pair
    assert jar2[COOKIE].value not in ("", cookie.value) and jar2[COOKIE]["httponly"]
    assert (await _post(api, "/api/auth/refresh", {}, cookie=jar2[COOKIE].value))[0] == 200


async def test_a_replayed_refresh_cookie_ends_the_session(api: Api) -> None:
    user = await api.register("clinician")
    _, _, jar = await _post(api, "/api/auth/login", {"email": user.email, "password": PASSWORD, "cookie": True})
    stolen = jar[COOKIE].value
    status, pair, jar2 = await _post(api, "/api/auth/refresh", {"cookie": True}, cookie=stolen)
    assert status == 200
    # The thief replays the old cookie: the whole session ends, the owner's new tokens too.
    status, err, _ = await _post(api, "/api/auth/refresh", {}, cookie=stolen)
    assert status == 401 and err["error"]["code"] == "refresh_token_reused"
    status, err, _ = await _post(api, "/api/auth/refresh", {}, cookie=jar2[COOKIE].value)
    assert status == 401 and err["error"]["code"] == "session_revoked"
    status, err = await api.request("GET", "/api/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert status == 401 and err["error"]["code"] == "session_revoked"


async def test_logout_clears_the_cookie_and_its_token_is_dead(api: Api) -> None:
    user = await api.register("clinician")
    _, body, jar = await _post(api, "/api/auth/login", {"email": user.email, "password": PASSWORD, "cookie": True})
    status, _, cleared = await _post(api, "/api/auth/logout", None, cookie=jar[COOKIE].value,
                                     token=body["access_token"])
    assert status == 204
    assert cleared[COOKIE].value == "" and int(cleared[COOKIE]["max-age"]) == 0
    assert cleared[COOKIE]["path"] == "/api/auth"  # the same cookie, or the browser would keep it
    status, err, _ = await _post(api, "/api/auth/refresh", {}, cookie=jar[COOKIE].value)
    assert status == 401 and err["error"]["code"] == "session_revoked"
    # Without a cookie or a token in the body, nothing to refresh.
    status, err, _ = await _post(api, "/api/auth/refresh", {})
    assert status == 401 and err["error"]["code"] == "token_missing"


async def test_a_new_account_from_an_invitation_gets_the_cookie_too(api: Api) -> None:
    admin, org_id = await api.org_admin()
    token = await api.invite(admin, org_id, "dr.cookie@example.org")
    status, body, jar = await _post(api, "/api/invitations/accept", {
        "token": token, "email": "dr.cookie@example.org", "name": "Dr Cookie", "password": PASSWORD, "cookie": True})
    assert status == 201 and body["access_token"] and "refresh_token" not in body
    assert jar[COOKIE]["httponly"] and jar[COOKIE]["path"] == "/api/auth"
    assert (await _post(api, "/api/auth/refresh", {}, cookie=jar[COOKIE].value))[0] == 200


FIND_TOKENS = """() => {
    const found = [];
    const looks = (v) => typeof v === "string" && /eyJ[\\w-]+\\.[\\w-]+\\.[\\w-]+/.test(v);
    for (const store of [sessionStorage, localStorage])
        for (let i = 0; i < store.length; i++) if (looks(store.getItem(store.key(i)))) found.push(store.key(i));
    if (looks(document.cookie) || document.cookie.includes("hm_refresh")) found.push("document.cookie");
    return found;
}"""


async def test_no_token_in_script_reach_and_a_reload_keeps_the_user_signed_in(api: Api) -> None:
    patient, clinician = await api.register("patient", name="Ana Ribeiro"), await api.register("clinician")
    await api.link(patient, clinician)
    async with chromium() as browser:
        page = await browser.new_page()  # the dashboard's policy enforced
        await sign_in(page, api.base_url, clinician)
        await page.locator(f'.patient-row[data-id="{patient.id}"]').wait_for()
        assert await page.evaluate(FIND_TOKENS) == []
        assert await page.evaluate("document.cookie") == ""
        cookies = {c["name"]: c for c in await page.context.cookies()}
        assert cookies[COOKIE]["httpOnly"] and cookies[COOKIE]["secure"] and cookies[COOKIE]["path"] == "/api/auth"
        assert cookies[COOKIE]["sameSite"] == "Strict"
        # A reload: signed in again with the cookie, the patient list and the live connection back.
        await page.reload()
        await page.wait_for_selector("#app-view:not([hidden])")
        await page.locator(f'.patient-row[data-id="{patient.id}"]').wait_for()
        await page.wait_for_selector("#conn[data-state=connected]")
        assert await page.evaluate(FIND_TOKENS) == []
        # The refresh token rotated (the reload used it): the one from before is now a replay.
        status, err = await api.request("POST", "/api/auth/refresh", json={"refresh_token": cookies[COOKIE]["value"]})
        assert status == 401 and err["error"]["code"] == "refresh_token_reused"
