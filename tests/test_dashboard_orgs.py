"""The dashboard's Organisation panel in Debian's headless Chromium, under the page's Content-Security-Policy
(no inline script): an admin invites a clinician and is shown the link; the link opens the sign-up form, which
makes the clinician's account; the admin sees the new member and suspends them, and the clinician's page is
signed out."""

from __future__ import annotations

from tests.browser import chromium, sign_in
from tests.helpers import PASSWORD, Api


async def test_admin_invites_and_suspends_a_clinician_from_the_page(api: Api) -> None:
    admin, _ = await api.org_admin()
    email = "dr.page@example.org"
    async with chromium() as browser:
        errors: list[str] = []
        page = await browser.new_page(viewport={"width": 1300, "height": 900})  # the policy enforced
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        await sign_in(page, api.base_url, admin)
        await page.click("#org-btn")
        await page.wait_for_selector("#org-view:not([hidden])")
        assert await page.inner_text("#org-name") == "Test clinic"
        await page.fill("#invite-email", email)
        await page.click("#invite-form button[type=submit]")
        await page.wait_for_selector("#invite-result:not([hidden])")
        link = await page.input_value("#invite-link")
        assert "#invitation=" in link and "Not mailed" in await page.inner_text("#invite-mailed")
        await page.locator("#invitations li", has_text=email).wait_for()

        joining = await browser.new_page()
        joining.on("pageerror", lambda exc: errors.append(str(exc)))
        await joining.goto(link)
        await joining.wait_for_selector("#join-view:not([hidden])")
        await joining.fill("#join-email", email)
        await joining.fill("#join-name", "Dr Page")
        await joining.fill("#join-password", PASSWORD)
        await joining.click("#join-form button[type=submit]")
        await joining.wait_for_selector("#app-view:not([hidden])")
        assert await joining.inner_text("#user-name") == "Dr Page"
        assert "invitation" not in joining.url  # the token is gone from the address bar

        await page.click("#org-btn")
        member = page.locator("#members li", has_text=email)
        await member.wait_for()
        await member.locator("button", has_text="Suspend").click()
        await page.locator("#members li.status-suspended", has_text=email).wait_for()
        await joining.wait_for_selector("#login-view:not([hidden])", timeout=15_000)  # signed out at once
        assert errors == []
    status, body = await api.request("POST", "/api/auth/login", json={"email": email, "password": PASSWORD})
    assert status == 403 and body["error"]["code"] == "account_suspended"
