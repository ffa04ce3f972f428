"""The SSRF guard: registration checks and the connect-time check on resolved addresses."""

from __future__ import annotations

import asyncio
import ipaddress
import threading

import httpx
import pytest

from relay.egress import EgressRefused, SystemResolver, blocked_reason, build_client, validate_url
from tests.webhook_receiver import LOOPBACK, running

REFUSED_URLS = [
    "http://127.0.0.1/hook",
    "http://[::1]/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.1/",
    "http://192.168.1.10/",
    "http://172.16.0.1/",
    "http://100.64.0.1/",  # CGNAT
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://[2002:7f00:1::]/",  # 6to4 around 127.0.0.1
    "http://2130706433/",  # 127.0.0.1 as one number
    "http://0x7f.1/",
    "http://localhost:8080/",
    "http://api.localhost/",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_registration_refuses_literal_addresses_in_blocked_ranges(url: str) -> None:
    with pytest.raises(EgressRefused, match="refused"):
        validate_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https://user@example.com/hook", "credentials"),
        ("https:///nohost", "no host"),
        ("", "required"),
    ],
)
def test_registration_refuses_other_schemes_credentials_and_junk_with_a_clear_message(
    url: str, message: str
) -> None:
    with pytest.raises(EgressRefused, match=message):
        validate_url(url)


def test_registration_accepts_public_urls_and_allow_listed_addresses() -> None:
    assert validate_url("https://hooks.example.com/relay?x=1") == "https://hooks.example.com/relay?x=1"
    assert validate_url("http://93.184.216.34:8080/hook")
    assert validate_url("http://127.0.0.1:9/hook", LOOPBACK)
    assert validate_url("http://[::ffff:127.0.0.1]/hook", LOOPBACK)


def test_public_addresses_are_not_blocked_and_mapped_forms_are() -> None:
    assert blocked_reason(ipaddress.ip_address("93.184.216.34")) is None
    assert blocked_reason(ipaddress.ip_address("2606:4700::1111")) is None
    assert blocked_reason(ipaddress.ip_address("::ffff:10.0.0.1")) is not None
    assert blocked_reason(ipaddress.ip_address("64:ff9b::a9fe:a9fe")) is not None  # NAT64 of 169.254.169.254


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/",
        "http://[::1]:9/",
        "http://169.254.169.254/",
        "http://10.0.0.1/",
        "http://[::ffff:127.0.0.1]:9/",
    ],
)
async def test_send_time_refuses_blocked_literals(url: str) -> None:
    async with build_client() as client:
        with pytest.raises(EgressRefused):
            await client.post(url, content=b"{}")


async def test_send_time_refuses_a_host_name_resolving_to_a_private_address() -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        return ["10.1.2.3"]

    async with build_client(resolver=rebinding) as client:
        with pytest.raises(EgressRefused, match=r"hooks\.example\.com resolves to 10\.1\.2\.3"):
            await client.post("https://hooks.example.com/hook", content=b"{}")


async def test_send_time_refuses_localhost_by_name_unless_allow_listed() -> None:
    async with running() as receiver:
        url = f"http://localhost:{receiver.port}/hook"
        async with build_client() as client:
            with pytest.raises(EgressRefused, match="loopback"):
                await client.post(url, content=b"{}")
        async with build_client(LOOPBACK) as client:
            assert (await client.post(url, content=b"{}")).status_code == 204


async def test_connects_to_the_checked_address_without_a_second_lookup() -> None:
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    async with running() as receiver:
        # "rebind.invalid" resolves nowhere but in our resolver: the request can only
        # arrive if the connection went to the address the guard checked.
        async with build_client(LOOPBACK, resolver=resolver) as client:
            response = await client.post(f"http://rebind.invalid:{receiver.port}/hook", content=b"{}")
        assert response.status_code == 204
        item = await receiver.get()
        assert item.headers["host"] == f"rebind.invalid:{receiver.port}"
        assert lookups == ["rebind.invalid"]


async def test_redirects_are_not_followed_and_environment_proxies_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    async with build_client() as client:
        assert client.follow_redirects is False
        with pytest.raises(EgressRefused):  # not a proxy error: the guard saw the real destination
            await client.post("http://10.0.0.1/", content=b"")
    assert isinstance(client, httpx.AsyncClient)


async def test_a_lookup_that_never_answers_is_abandoned_after_the_dns_timeout() -> None:
    async def name_server_that_never_answers(host: str, port: int) -> list[str]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async with build_client(LOOPBACK, resolver=name_server_that_never_answers, dns_timeout=0.2) as client:
        async with asyncio.timeout(10):  # without the DNS timeout, the request waits for an hour
            with pytest.raises(
                httpx.ConnectError, match=r"cannot resolve silent\.test: .*no answer within 0\.2 s"
            ):
                await client.post("http://silent.test/hook", content=b"{}")


async def test_system_lookups_never_wait_for_the_default_executor() -> None:
    # loop.getaddrinfo runs in the loop's default executor: with its threads all held (by
    # other lookups against a name server that does not answer, say) it would wait here.
    loop = asyncio.get_running_loop()
    held = threading.Event()
    blockers = [loop.run_in_executor(None, held.wait, 30) for _ in range(64)]
    resolver = SystemResolver()
    try:
        async with asyncio.timeout(5):
            addresses = await resolver("localhost", 80)
    finally:
        held.set()
        await asyncio.gather(*blockers)
        await resolver.aclose()
    assert "127.0.0.1" in addresses
