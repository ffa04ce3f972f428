"""The live calendar page in a real browser: live updates, the fallback banner, resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from relay import demo
from relay.auth import mint_token
from relay.embedded import free_port
from tests.conftest import make_settings
from tests.support import insert_booking

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SECRET = "browser-test-secret-0123456789abcdef"

try:
    from playwright.async_api import Page, async_playwright
except ImportError:  # pragma: no cover - playwright is a dev dependency
    async_playwright = None  # type: ignore[assignment]

if not CHROMIUM or async_playwright is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser test: install Debian's chromium (see .ci/run)")
    pytest.skip(
        "Chromium is not installed (apt-get install chromium); browser test skipped", allow_module_level=True
    )


class RelayProcess:
    """`relay run` as a separate process that the test can kill and start again."""

    def __init__(self, db_url: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "RELAY_HTTP_HOST": "127.0.0.1",
            "RELAY_HTTP_PORT": str(self.port),
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_PROBE_INTERVAL": "0.5",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("relay run did not become ready")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def relay_process(db_url: str) -> Iterator[RelayProcess]:
    process = RelayProcess(db_url)
    process.start()
    try:
        yield process
    finally:
        process.kill()


async def card(page: Page, booking_id: str, timeout_ms: float) -> None:
    await page.wait_for_selector(f'.card[data-booking-id="{booking_id}"]', timeout=timeout_ms)


BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def calendar(
    db_url: str, relay: RelayProcess, query: str = ""
) -> AsyncIterator[tuple[Page, asyncpg.Connection]]:
    """The demo calendar of merchant m1's user u1, live in Chromium, and a writer connection."""
    token = mint_token(make_settings(db_url, jwt_secret=SECRET), merchant_id="m1", user_id="u1")
    writer = await asyncpg.connect(db_url)
    assert async_playwright is not None and CHROMIUM is not None
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            await page.goto(f"http://127.0.0.1:{relay.port}/?token={token}{query}")
            await page.wait_for_selector("#badge.live", timeout=10_000)
            yield page, writer
            await browser.close()
    finally:
        await writer.close()


async def test_calendar_shows_the_demos_attached_payments_too(
    db_url: str, relay_process: RelayProcess
) -> None:
    """`relay demo` attaches billing.payments while the page is open: its events reach the
    page's log, and the card of the booking a payment names shows the payment's state."""
    async with calendar(db_url, relay_process) as (page, writer):
        await demo.prepare(db_url)  # the demo's second source, attached while relay runs
        await insert_booking(writer, "bk-paid", "m1", status="CONFIRMED")
        await card(page, "bk-paid", 5_000)
        await writer.execute(demo.demo_query("add_payment"), "pay_1", "m1", "bk-paid", 4000)
        await writer.execute(demo.demo_query("settle_payment"), "pay_1", "PAID")
        await page.wait_for_selector('.card[data-booking-id="bk-paid"] .payment.PAID', timeout=10_000)
        log = await page.inner_text("#log")
        assert "payment_created pay_1 PENDING" in log and "payment_updated pay_1 PAID" in log


async def test_calendar_on_socketio_recovers_the_bookings_committed_during_a_graceful_restart(
    db_url: str, relay_process: RelayProcess
) -> None:
    async with calendar(db_url, relay_process, "&via=socketio") as (page, writer):
        await insert_booking(writer, "bk-live", "m1")
        await card(page, "bk-live", 2_000)

        relay_process.kill(signal.SIGTERM)  # a deploy: the page is not told goodbye
        await page.wait_for_selector("#badge.connecting", timeout=5_000)
        await insert_booking(writer, "bk-during-deploy", "m1")
        await insert_booking(writer, "bk-other-merchant", "m2")

        relay_process.start()
        await page.wait_for_selector("#badge.live", timeout=15_000)
        assert await page.inner_text("#badge") == "live · recovered"
        await card(page, "bk-during-deploy", 5_000)
        assert "Socket.IO reconnected: missed events recovered" in await page.inner_text("#log")
        assert await page.query_selector('.card[data-booking-id="bk-other-merchant"]') is None
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "calendar-socketio.png"), full_page=True)


async def test_calendar_updates_live_shows_banner_and_resumes(
    db_url: str, relay_process: RelayProcess
) -> None:
    async with calendar(db_url, relay_process) as (page, writer):
        started = time.monotonic()
        await insert_booking(writer, "bk-live", "m1")
        await insert_booking(writer, "bk-other-merchant", "m2")
        await card(page, "bk-live", 1_000)
        assert time.monotonic() - started < 1.0

        # Who is online: this page's user, then another staff member's page opens and closes.
        await page.wait_for_selector('#online span[data-user-id="u1"]', timeout=5_000)
        other = mint_token(make_settings(db_url, jwt_secret=SECRET), merchant_id="m1", user_id="u2")
        browser = page.context.browser
        assert browser is not None
        second = await browser.new_page()
        await second.goto(f"http://127.0.0.1:{relay_process.port}/?token={other}")
        await page.wait_for_selector('#online span[data-user-id="u2"]', timeout=5_000)
        await second.close()
        await page.wait_for_selector('#online span[data-user-id="u2"]', state="detached", timeout=5_000)

        relay_process.kill()
        await page.wait_for_selector("#banner.shown", timeout=5_000)
        assert "Real-time updates unavailable" in await page.inner_text("#banner")
        await insert_booking(writer, "bk-while-down", "m1")

        relay_process.start()
        await page.wait_for_selector("#badge.live", timeout=15_000)
        await card(page, "bk-while-down", 5_000)
        assert not await page.is_visible("#banner")
        assert await page.query_selector('.card[data-booking-id="bk-other-merchant"]') is None
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "calendar.png"), full_page=True)
