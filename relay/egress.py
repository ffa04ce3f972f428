"""SSRF guard for outgoing HTTP (webhooks, Web Push).

Two checks. At registration, :func:`validate_url` refuses what can be refused from
the URL alone: other schemes, credentials, and literal addresses in blocked ranges.
At send time the shared client (:func:`build_client`) resolves the host name each
time it opens a connection, refuses addresses that are not public unless they are in
``RELAY_EGRESS_ALLOW``, and connects to the very address it checked: there is no
second lookup that a rebinding DNS server could answer differently. TLS still sends
SNI for, and verifies the certificate against, the URL's host name, because httpcore
starts TLS on the stream we return with ``server_hostname`` set to that name.

A pooled keep-alive connection is reused without a new lookup: it already goes to a
checked address. Proxies from the environment are ignored (they would bypass this).

Lookups are asynchronous (c-ares, through aiodns) and abandoned after a short timeout
(``RELAY_DNS_TIMEOUT``). They never use the event loop's default executor, where
``loop.getaddrinfo`` runs: a name server that does not answer would hold one of its few
threads for 5-10 s per lookup, and everything else queued there (an HTTP route's check,
asyncpg resolving a database host name) would wait behind one merchant's hostile names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiodns
import httpcore
import httpx

from relay.errors import RelayError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
DNS_TIMEOUT = 2.0

# Not covered by ``is_global`` / the other flags on every Python version we support.
_EXTRA_BLOCKED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",  # CGNAT (also cloud metadata, e.g. 100.100.100.200)
        "192.0.0.0/24",
        "198.18.0.0/15",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "64:ff9b:1::/48",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressRefused(RelayError):
    """The destination is not allowed (SSRF guard)."""


def _embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    # IPv4-compatible (deprecated) ::a.b.c.d
    if int(addr) >> 32 == 0 and int(addr) > 1:
        return ipaddress.IPv4Address(int(addr))
    return None


def blocked_reason(addr: IPAddress) -> str | None:
    """Why ``addr`` is not a public destination, or None when it is."""
    inner = _embedded_ipv4(addr)
    if inner is not None:
        reason = blocked_reason(inner)
        return f"{reason} (embedded in {addr})" if reason else None
    checks = (
        (addr.is_unspecified, "unspecified"),
        (addr.is_loopback, "loopback"),
        (addr.is_link_local, "link-local"),
        (addr.is_multicast, "multicast"),
        (addr.is_private, "private"),
        (addr.is_reserved, "reserved"),
        (any(addr in net for net in _EXTRA_BLOCKED), "non-public"),
        (not addr.is_global, "non-public"),
    )
    return next((name for flag, name in checks if flag), None)


def is_allowed(addr: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    inner = _embedded_ipv4(addr)
    for candidate in (addr, inner):
        if candidate is not None and any(candidate in net for net in allow):
            return True
    return blocked_reason(addr) is None


def check_address(addr: IPAddress, allow: Sequence[IPNetwork], host: str) -> None:
    if not is_allowed(addr, allow):
        reason = blocked_reason(addr)
        where = f"{host} resolves to {addr}" if host != str(addr) else f"{addr}"
        raise EgressRefused(f"{where}: {reason} addresses are refused (RELAY_EGRESS_ALLOW lets them through)")


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one, including legacy IPv4 forms (``127.1``, ``0x7f.1``)."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text) and text[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def validate_url(url: str, allow: Sequence[IPNetwork] = ()) -> str:
    """Check a destination URL at registration; return it, or raise ``EgressRefused``."""
    if not isinstance(url, str) or not url.strip():
        raise EgressRefused("url is required")
    url = url.strip()
    if len(url) > 2048:
        raise EgressRefused("url is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EgressRefused(f"url is not valid: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise EgressRefused(f"url must use http or https, not {parts.scheme or 'no scheme'!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise EgressRefused("url must not contain credentials (user:password@)")
    host = parts.hostname
    if not host:
        raise EgressRefused("url has no host")
    if port == 0:
        raise EgressRefused("url port 0 is not valid")
    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise EgressRefused(f"url is not valid: {exc}") from None
    addr = literal_address(host)
    if addr is None and (host == "localhost" or host.endswith(".localhost")):
        addr = ipaddress.ip_address("127.0.0.1")  # RFC 6761: always loopback
    if addr is not None:
        check_address(addr, allow, host)
    return url


class SystemResolver:
    """The system's name servers and hosts file, asked asynchronously through c-ares.

    Called as ``await resolver(host, port)``: every address ``host`` resolves to, in the
    resolver's order; an ``OSError`` when it does not resolve. An abandoned lookup (see
    :func:`lookup`) holds no thread, only a pending query that c-ares ends by itself.
    """

    def __init__(self) -> None:
        self._dns: aiodns.DNSResolver | None = None

    async def __call__(self, host: str, port: int) -> list[str]:
        if self._dns is None:
            self._dns = aiodns.DNSResolver(loop=asyncio.get_running_loop())
        try:
            result = await self._dns.getaddrinfo(host, port=port, type=socket.SOCK_STREAM)
        except aiodns.error.DNSError as exc:  # args: (c-ares error number, message)
            raise socket.gaierror(*exc.args) from None
        seen: list[str] = []
        for node in result.nodes:
            raw = node.addr[0]
            address = raw.decode() if isinstance(raw, bytes) else str(raw)
            if address not in seen:
                seen.append(address)
        return seen

    async def aclose(self) -> None:
        if self._dns is not None:
            dns, self._dns = self._dns, None
            await dns.close()


async def lookup(resolve: Resolver, host: str, port: int, seconds: float = DNS_TIMEOUT) -> list[str]:
    """``resolve(host, port)``, abandoned after ``seconds`` with an ``OSError``."""
    try:
        async with asyncio.timeout(seconds):
            return await resolve(host, port)
    except TimeoutError:
        raise socket.gaierror(socket.EAI_AGAIN, f"no answer within {seconds:g} s") from None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks, then connects to the checked address."""

    def __init__(
        self,
        allow: Iterable[IPNetwork] = (),
        *,
        resolver: Resolver,
        dns_timeout: float = DNS_TIMEOUT,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow = tuple(allow)
        self._resolve = resolver
        self._dns_timeout = dns_timeout
        self._backend = backend or httpcore.AnyIOBackend()

    async def addresses(self, host: str, port: int) -> list[str]:
        """The checked addresses to try for ``host``; raise ``EgressRefused`` if none is allowed."""
        literal = literal_address(host)
        if literal is not None:
            check_address(literal, self._allow, host)
            return [str(literal)]
        try:
            resolved = await lookup(self._resolve, host, port, self._dns_timeout)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        allowed: list[str] = []
        refusal: EgressRefused | None = None
        for text in resolved:
            try:
                check_address(ipaddress.ip_address(text.split("%", 1)[0]), self._allow, host)
                allowed.append(text)
            except EgressRefused as exc:
                refusal = refusal or exc
        if not allowed:
            raise refusal or httpcore.ConnectError(f"{host} resolves to no address")
        return allowed

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        last: Exception | None = None
        for address in await self.addresses(host, port):
            try:
                return await self._backend.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("unix sockets are not a destination")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _GuardedPool(httpx.AsyncHTTPTransport):
    """httpx's default transport with its connection pool on a :class:`GuardedBackend`.

    httpx 0.28 offers no public parameter for the network backend (encode/httpx#3749),
    so the pool is rebuilt with the same settings and our backend.
    """

    def __init__(self, backend: GuardedBackend, *, limits: httpx.Limits, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )


class GuardedTransport(httpx.AsyncBaseTransport):
    """The SSRF-guarded transport, spread over several connection pools.

    httpcore's pool does work proportional to its open connections for every request,
    which makes one large pool slow at a few hundred concurrent requests; requests are
    spread over ``shards`` smaller pools by destination (scheme, host, port and path),
    so an endpoint's keep-alive connections stay in one of them. Each shard may open up
    to ``max_connections`` (its idle keep-alive connections are its share of them): a
    destination that holds its connections open without answering must not leave the
    other destinations hashed to its shard waiting for one. The caller bounds how many
    requests are in flight.

    Without a ``resolver`` the transport asks the system's name servers through its own
    :class:`SystemResolver`, closed with it.
    """

    def __init__(
        self,
        allow: Iterable[IPNetwork] = (),
        *,
        limits: httpx.Limits,
        verify: ssl.SSLContext | bool = True,
        resolver: Resolver | None = None,
        dns_timeout: float = DNS_TIMEOUT,
        shards: int = 16,
    ) -> None:
        self._own_resolver: SystemResolver | None = None
        if resolver is None:
            resolver = self._own_resolver = SystemResolver()
        backend = GuardedBackend(allow, resolver=resolver, dns_timeout=dns_timeout)
        per_shard = httpx.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=max(1, -(-(limits.max_keepalive_connections or 512) // shards)),
            keepalive_expiry=limits.keepalive_expiry,
        )
        context = (
            verify
            if isinstance(verify, ssl.SSLContext)
            else httpx.create_ssl_context(verify, trust_env=False)
        )
        self._shards = [_GuardedPool(backend, limits=per_shard, ssl_context=context) for _ in range(shards)]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = b"%s|%s|%d|%s" % (url.raw_scheme, url.raw_host, url.port or 0, url.raw_path.split(b"?")[0])
        return await self._shards[zlib.crc32(key) % len(self._shards)].handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()
        if self._own_resolver is not None:
            await self._own_resolver.aclose()


def build_client(
    allow: Iterable[IPNetwork] = (),
    *,
    timeout: float = 15.0,
    max_connections: int = 512,
    verify: ssl.SSLContext | bool = True,
    resolver: Resolver | None = None,
    dns_timeout: float = DNS_TIMEOUT,
) -> httpx.AsyncClient:
    """The shared outgoing client: SSRF-guarded, no redirects, no environment proxies."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=30.0
    )
    return httpx.AsyncClient(
        transport=GuardedTransport(
            allow, limits=limits, verify=verify, resolver=resolver, dns_timeout=dns_timeout
        ),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": "relay-webhooks/1"},
    )
