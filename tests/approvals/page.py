"""Drive toolgate's approval page in a real headless Chromium (Debian's, through Playwright).

usage: page.py URL TOKEN APPROVAL_ID
Opens URL (the page on the admin listener), enters the operator token, waits for the
approval's card, reads it, approves it with a click, and prints what it saw as JSON.
"""

import json
import sys
import tempfile

from playwright.sync_api import sync_playwright

url, token, approval_id = sys.argv[1:4]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
    browser = p.chromium.launch_persistent_context(
        profile,
        executable_path="/usr/bin/chromium",
        headless=True,
        args=ARGS,
    )
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url)
    before = page.locator("article.approval").count()
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    card = page.locator(f'article[data-id="{approval_id}"]')
    card.wait_for(timeout=15000)
    card.locator(".chain table").wait_for(timeout=15000)
    seen = {
        "before_token": before,
        "stored_token": page.evaluate("sessionStorage.getItem('toolgate-operator-token')") == token,
        "cookies": browser.cookies(),
        "targeted": "target" in (card.get_attribute("class") or ""),
        "action": card.locator("h2").inner_text(),
        "status": card.locator("dd.status").inner_text(),
        "request": card.locator("dd.request").inner_text(),
        "attributes": json.loads(card.locator("pre.attributes").inner_text()),
        "body": card.locator("pre.body").inner_text(),
        "chain": [
            [cell.inner_text() for cell in row.locator("td").all()]
            for row in card.locator(".chain tbody tr").all()
        ],
    }
    page.fill("#approver", "Pat Operator")
    card.locator("textarea.comment").fill("checked on the page")
    card.locator("button.approve").click()
    message = card.locator(".message.ok")
    message.wait_for(timeout=15000)
    seen["message"] = message.inner_text()
    seen["problems"] = problems
    browser.close()

print(json.dumps(seen))
