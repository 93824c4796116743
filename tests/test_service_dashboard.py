"""The dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright).

Skipped, saying why, only when Chromium or Playwright is not installed
(``scripts/setup.sh`` installs both). A screenshot is saved under ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_REDIS_URL, free_port
from tests.service_helpers import REPO, ServiceProcess, drop_shared_keys, http_service, run_cli

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("XNAI_TEST_CHROMIUM") or shutil.which("chromium") or ""
ARTIFACTS = Path(os.environ.get("XNAI_TEST_ARTIFACTS", REPO / "test-artifacts"))
TOKEN = "dashboard-test-token-0123456789"

sync_api: Any
try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - setup.sh installs it with the dev extra
    sync_api = None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if sync_api is None:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM:
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


class Page:
    """A page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, url: str, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url)

    def close(self) -> None:
        self.context.close()


@contextmanager
def dashboard(browser: Any, path: Path, env: dict[str, str], **context: Any) -> Iterator[Page]:
    """The service of ``path`` with its dashboard open; on leaving, the page must have
    logged no error, and the page and the service are closed."""
    proc = ServiceProcess(path, env=env).start()
    try:
        view = Page(browser, proc.url + "/", **context)
        try:
            yield view
            assert view.errors == []
        finally:
            view.close()
    finally:
        proc.stop()


def config(path: Path, api: str, victim: str, prefix: str) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            redis_url = "{SHARED_REDIS_URL}"
            control_token_env = "XNAI_TEST_DASH_TOKEN"
            [monitor]
            check_interval = 0.5
            failure_threshold = 2
            success_threshold = 1
            [circuits]
            key_prefix = "{prefix}"
            names = ["llm"]
            [[services]]
            name = "api"
            type = "http"
            url = "{api}"
            timeout = 1
            [[services]]
            name = "victim"
            type = "http"
            url = "{victim}"
            timeout = 1
            """
        )
    )
    return path


@pytest.fixture
def prefix(key_prefix: str) -> Iterator[str]:
    yield f"{key_prefix}:cb:"
    drop_shared_keys(key_prefix)


def test_dashboard_live_updates_controls_and_reconnects(
    browser: Any, tmp_path: Path, prefix: str
) -> None:
    expect = sync_api.expect
    port = free_port()
    with http_service() as (api, _), http_service() as (victim, victim_server):
        path = config(tmp_path / "s.toml", api, victim, prefix)
        proc = ServiceProcess(path, env={"XNAI_TEST_DASH_TOKEN": TOKEN}, port=port).start()
        view = Page(browser, proc.url + "/", viewport={"width": 1200, "height": 900})
        try:
            page = view.page
            victim_card = page.locator('[data-service="victim"] .badge')
            expect(victim_card).to_have_text("healthy", timeout=15_000)

            # A service killed on loopback turns red within 3 checks, without a reload.
            checks_at_kill = proc.service("victim")["total_checks"]
            victim_server.kill()
            expect(victim_card).to_have_text("unhealthy", timeout=15_000)
            assert proc.service("victim")["total_checks"] - checks_at_kill <= 3 + 2
            assert page.locator('[data-service="victim"] .error').count() == 1
            # Without the token, the page says that it failed and when, not where or why.
            victim_error = page.locator('[data-service="victim"] .error')
            expect(victim_error).to_contain_text("shown with the control token")
            assert "127.0.0.1" not in page.locator('[data-service="victim"] .target').inner_text()

            # The controls: present (a token is configured) but locked until it is entered.
            open_button = page.get_by_role("button", name="open circuit llm")
            expect(open_button).to_be_disabled()
            _refused(page, open_button)
            assert _shared_state(prefix) == "closed"
            page.get_by_label("Control token").fill(TOKEN)
            page.get_by_role("button", name="Use token").click()
            expect(open_button).to_be_enabled(timeout=5_000)
            # With it, the polls carry it and the detail shows.
            expect(victim_error).to_contain_text("ConnectError", timeout=10_000)
            expect(page.locator('[data-service="victim"] .target')).to_contain_text("127.0.0.1")
            open_button.click()
            badge = page.locator('[data-circuit="llm"] .badge')
            expect(badge).to_have_text("open (forced)", timeout=10_000)
            assert _shared_state(prefix) == "open"

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            # The service restarts: the page says so, then picks up again by itself.
            proc.stop()
            expect(page.locator("#connection")).to_contain_text("reconnecting", timeout=10_000)
            proc = ServiceProcess(path, env={"XNAI_TEST_DASH_TOKEN": TOKEN}, port=port).start()
            expect(page.locator("#connection")).to_contain_text("live", timeout=15_000)
            expect(page.locator('[data-service="api"] .badge')).to_have_text(
                "healthy", timeout=15_000
            )
            # Failed fetches while the service was away are expected network errors; the
            # page's own code raised nothing.
            assert [e for e in view.errors if "Failed to load resource" not in e] == []
        finally:
            view.close()
            proc.stop()


def test_dashboard_without_a_token_has_no_controls_and_fits_a_phone(
    browser: Any, tmp_path: Path, prefix: str
) -> None:
    expect = sync_api.expect
    with http_service() as (api, _), http_service() as (victim, _):
        path = config(tmp_path / "s.toml", api, victim, prefix)
        with dashboard(
            browser,
            path,
            {"XNAI_TEST_DASH_TOKEN": ""},
            viewport={"width": 375, "height": 740},
            is_mobile=True,
            has_touch=True,
        ) as view:
            page = view.page
            expect(page.locator('[data-circuit="llm"]')).to_have_count(1, timeout=15_000)
            expect(page.locator('[data-service="api"] .badge')).to_have_text(
                "healthy", timeout=15_000
            )
            assert page.get_by_role("button").count() == 0
            assert page.locator("#token-form").is_hidden()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, width
            # Every image has a name (the sparklines) and the live status is announced.
            names = page.locator("svg[role=img]").evaluate_all(
                "nodes => nodes.map(n => n.getAttribute('aria-label'))"
            )
            assert names
            assert all(name and name.startswith("Response times of") for name in names)
            assert page.locator("#overall").get_attribute("aria-live") == "polite"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)


def test_a_focused_circuit_button_keeps_focus_across_polls(
    browser: Any, tmp_path: Path, prefix: str
) -> None:
    """The page redraws every second: a keyboard user who tabbed to a circuit's button
    must still be on it at the next poll (and a click must not land on a button the poll
    has just replaced), so the button acts when Enter is pressed."""
    expect = sync_api.expect
    with _token_page(browser, tmp_path, prefix, TOKEN) as page:
        page.get_by_label("Control token").fill(TOKEN)
        page.get_by_role("button", name="Use token").click()
        open_button = page.get_by_role("button", name="open circuit llm")
        expect(open_button).to_be_enabled(timeout=15_000)
        open_button.focus()
        focused = "document.activeElement && document.activeElement.getAttribute('aria-label')"
        assert page.evaluate(focused) == "open circuit llm"
        # Two polls later (each one rewrites the connection line's time).
        connection = page.locator("#connection")
        for _ in range(2):
            before = connection.inner_text()
            expect(connection).not_to_have_text(before, timeout=10_000)
        assert page.evaluate(focused) == "open circuit llm"
        page.keyboard.press("Enter")
        badge = page.locator('[data-circuit="llm"] .badge')
        expect(badge).to_have_text("open (forced)", timeout=10_000)
        assert _shared_state(prefix) == "open"


def test_the_longest_service_name_fits_a_phone(browser: Any, tmp_path: Path) -> None:
    """A name may be 64 characters without a space: its card must wrap it, not widen the
    page past a phone's width."""
    expect = sync_api.expect
    name = "a" * 30 + "-" + "b" * 33
    path = tmp_path / "s.toml"
    path.write_text(
        f'[monitor]\ncheck_interval = 0.5\n[[services]]\nname = "{name}"\ntype = "tcp"\n'
        'host = "127.0.0.1"\nport = 1\n'
    )
    with dashboard(
        browser, path, {}, viewport={"width": 375, "height": 740}, is_mobile=True
    ) as view:
        page = view.page
        expect(page.locator(f'[data-service="{name}"] .badge')).to_have_count(1, timeout=15_000)
        expect(page.locator("#episodes li")).to_contain_text(name, timeout=15_000)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, width


def test_a_wrong_token_is_said_to_be_refused_without_pressing_a_control(
    browser: Any, tmp_path: Path, prefix: str
) -> None:
    """The polls carry the token: when the service answers without the detail it grants,
    the page says the token was refused instead of claiming the details are shown."""
    expect = sync_api.expect
    with _token_page(browser, tmp_path, prefix, TOKEN) as page:
        open_button = page.get_by_role("button", name="open circuit llm")
        expect(open_button).to_be_disabled(timeout=15_000)
        _refused(page, open_button)
        _unlock(page, open_button, TOKEN)


@contextmanager
def _token_page(browser: Any, tmp_path: Path, prefix: str, token: str) -> Iterator[Any]:
    """The dashboard of a service whose control token is ``token`` (two HTTP services
    watched, the circuit llm under ``prefix``), in a 1200x900 page."""
    with http_service() as (api, _), http_service() as (victim, _):
        path = config(tmp_path / "s.toml", api, victim, prefix)
        with dashboard(
            browser, path, {"XNAI_TEST_DASH_TOKEN": token}, viewport={"width": 1200, "height": 900}
        ) as view:
            yield view.page


def _refused(page: Any, open_button: Any) -> None:
    """Enter a wrong token and see it refused, the controls still locked."""
    page.get_by_label("Control token").fill("wrong-token-wrong-token")
    page.get_by_role("button", name="Use token").click()
    sync_api.expect(page.locator("#token-state")).to_have_text(
        "token refused: enter it again", timeout=10_000
    )
    sync_api.expect(open_button).to_be_disabled()


def _unlock(page: Any, open_button: Any, token: str) -> None:
    """Enter ``token`` and see the controls unlocked by it."""
    page.get_by_label("Control token").fill(token)
    page.get_by_role("button", name="Use token").click()
    sync_api.expect(open_button).to_be_enabled(timeout=10_000)
    sync_api.expect(page.locator("#token-state")).to_have_text("controls unlocked, details shown")


def _shared_state(prefix: str) -> str:
    shown = run_cli(
        "circuits", "show", "llm", "--redis-url", SHARED_REDIS_URL, "--prefix", prefix, "--json"
    )
    if shown.code == 1:
        return "closed"  # never written: a fresh circuit
    return str(shown.json()["state"])


def test_a_token_beyond_latin_1_unlocks_the_controls(
    browser: Any, tmp_path: Path, prefix: str
) -> None:
    """``fetch`` refuses a header value beyond Latin-1 (a TypeError): with a token holding
    a "€" every poll failed, and the page said "reconnecting..." for ever. The page now
    sends the token's UTF-8 bytes, which the service compares."""
    expect = sync_api.expect
    token = "Kontroll-ö-€-0123456789"
    with _token_page(browser, tmp_path, prefix, token) as page:
        open_button = page.get_by_role("button", name="open circuit llm")
        expect(open_button).to_be_disabled(timeout=15_000)
        _unlock(page, open_button, token)
        expect(page.locator("#connection")).to_have_text(re.compile("^live"))
        open_button.click()
        expect(page.locator("#token-state")).to_have_text("llm: open done", timeout=10_000)
        assert _shared_state(prefix) == "open"
