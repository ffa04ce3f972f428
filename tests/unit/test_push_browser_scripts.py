"""The shipped service worker and subscribe snippet, run by Node in a fake browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from relay.push.vapid import b64url_decode, generate_key_pair

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "js" / "push_harness.js"
STATIC = ROOT / "relay" / "static"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js to run the browser scripts")


def run(mode: str, script: str, scenario: dict[str, Any]) -> list[Any]:
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(HARNESS), mode, str(STATIC / script), json.dumps(scenario)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: list[Any] = json.loads(done.stdout)
    return result


NOTE = {
    "title": "New booking",
    "body": "Booking b1 was created (PENDING).",
    "tag": "booking-b1",
    "url": "/?booking=b1",
    "data": {"id": "b1", "merchantId": "m1"},
}


def test_service_worker_shows_the_pushed_notification_and_opens_its_url_on_click() -> None:
    log = run("sw", "sw.js", {"push": json.dumps(NOTE)})
    assert log[0] == [
        "show",
        "New booking",
        {
            "body": NOTE["body"],
            "tag": "booking-b1",
            "renotify": True,
            "data": {"url": "/?booking=b1", "payload": NOTE["data"]},
        },
    ]
    assert log[1:] == [["close"], ["open", "https://app.example.com/?booking=b1"]]


def test_service_worker_focuses_an_open_window_on_the_url_instead_of_opening_another() -> None:
    log = run("sw", "sw.js", {"push": json.dumps(NOTE), "windows": ["https://app.example.com/?booking=b1"]})
    assert ["focus", "https://app.example.com/?booking=b1"] in log
    assert not any(entry[0] == "open" for entry in log)


def test_service_worker_survives_a_push_that_is_not_json() -> None:
    log = run("sw", "sw.js", {"push": "plain text"})
    assert log[0][0] == "show" and log[0][2]["body"] == "plain text"


def test_snippet_subscribes_with_relays_key_and_posts_the_subscription_with_the_token() -> None:
    _, public = generate_key_pair()
    log = run("snippet", "push.js", {"publicKey": public})
    assert log[0] == ["register", "/sw.js", {"scope": "/"}]
    assert log[1] == ["subscribe", True, list(b64url_decode(public))]
    [(key_url, key_method, _, _), (sub_url, sub_method, headers, body)] = log[2][1]
    assert (key_url, key_method) == ("/push/vapid-public-key", "GET")
    assert (sub_url, sub_method) == ("/push/subscriptions", "POST")
    assert headers["Authorization"] == "Bearer T"
    assert body["endpoint"] == "https://push.example.com/abc" and body["channels"] == ["booking_created"]
