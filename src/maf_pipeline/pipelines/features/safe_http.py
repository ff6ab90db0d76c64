"""HTTP(S) fetching that cannot be turned against the machine it runs on (server-side request forgery).

Image URLs come from metadata files, i.e. from strangers: a URL naming ``169.254.169.254`` (a cloud VM's
metadata service), ``localhost`` or a host on the private network must not be fetched. :class:`HostPolicy`
resolves a URL's host and refuses non-public addresses unless the host is in
``features.images.download.allowed_hosts``; :func:`opener` applies it to the first request, to every
redirect, and at connection time (connecting to the very address that was checked, so a DNS answer that
changes between check and connect cannot slip through).
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class RefusedAddressError(OSError):
    """A URL's host resolves to a private, loopback, link-local or otherwise non-public address."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is globally routable unicast (IPv4 embedded in IPv6 judged as the IPv4 one)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class HostPolicy:
    """Which hosts downloads may reach: public addresses, plus the hosts of ``download.allowed_hosts``.

    An allowed entry is a host name (matched against the URL's host), an IP address or a network in CIDR
    notation (matched against the URL's host and every address it resolves to).
    """

    names: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_config(cls, allowed_hosts: Sequence[str] | str | None) -> HostPolicy:
        """Parse ``features.images.download.allowed_hosts`` (a list, or one string)."""
        if isinstance(allowed_hosts, str):
            allowed_hosts = [allowed_hosts]
        names, networks = set(), []
        for entry in allowed_hosts or ():
            entry = str(entry).strip().strip("[]").lower()
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def _allowed_ip(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)

    def resolve(self, host: str, port: int) -> list[tuple]:
        """``getaddrinfo`` of ``host``, refusing non-public addresses the policy does not allow."""
        host = host.strip("[]")
        if host.lower().rstrip(".") in self.names:
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for info in infos:
            ip = ipaddress.ip_address(info[4][0].split("%")[0])
            if not is_public_address(ip) and not self._allowed_ip(ip):
                raise RefusedAddressError(
                    f"{host} resolves to the non-public address {ip}; refused (server-side request forgery "
                    "guard). To fetch from it, add the host to features.images.download.allowed_hosts"
                )
        return infos

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host resolves to a non-public address (raises; DNS errors propagate)."""
        parts = urlsplit(url)
        if parts.hostname:
            self.resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))

    def create_connection(
        self, address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None
    ) -> socket.socket:
        """``socket.create_connection`` that connects only to the addresses :meth:`resolve` accepted.

        Connecting to the checked address (not resolving the name again) defeats DNS rebinding.
        """
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in self.resolve(host, port):
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        raise error or OSError(f"cannot connect to {host}:{port}")


def _guarded_connection(conn_class: type, policy: HostPolicy, req: urllib.request.Request) -> Callable:
    """A connection factory for ``do_open``: direct connections go through the policy's connect."""
    proxied = req.has_proxy() or getattr(req, "_tunnel_host", None)

    def factory(host: str, **kwargs: Any) -> Any:
        conn = conn_class(host, **kwargs)
        if not proxied:  # through a proxy only the URL's host was checked (check_url), not the proxy
            conn._create_connection = policy.create_connection
        return conn

    return factory


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: HostPolicy) -> None:
        super().__init__()
        self.policy = policy

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_guarded_connection(http.client.HTTPConnection, self.policy, req), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: HostPolicy) -> None:
        super().__init__()
        self.policy = policy

    def https_open(self, req: urllib.request.Request) -> Any:
        factory = _guarded_connection(http.client.HTTPSConnection, self.policy, req)
        return self.do_open(factory, req, context=self._context)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http/https URLs (urllib would also follow ftp) of hosts the policy allows."""

    def __init__(self, policy: HostPolicy | None = None) -> None:
        super().__init__()
        self.policy = policy or HostPolicy()

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-http(s) URL refused", headers, fp)
        self.policy.check_url(newurl)  # also refused when reached through a proxy
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@functools.lru_cache(maxsize=8)
def opener(policy: HostPolicy) -> urllib.request.OpenerDirector:
    """A urllib opener that applies ``policy`` to requests, redirects and connections (one per policy)."""
    return urllib.request.build_opener(
        _HttpOnlyRedirects(policy), _GuardedHTTPHandler(policy), _GuardedHTTPSHandler(policy)
    )
