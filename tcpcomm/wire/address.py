"""Addresses as people write them, and the ids a side's peers are known by."""

from __future__ import annotations

from itertools import count

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress


def addressText(address: IAddress) -> str:
    """
    An address as people write it: C{host:port}, C{[host]:port} for IPv6,
    C{unix:path} for a named UNIX socket.
    """
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, UNIXAddress):
        if not address.name:
            return "unix"  # the peer of a UNIX socket has no name of its own
        name = address.name.decode() if isinstance(address.name, bytes) else address.name
        return f"unix:{name}"
    return str(address)


class PeerIds:
    """
    The ids of one side's peers, which its sessions are registered and
    addressed by.
    """

    def __init__(self) -> None:
        self._serials = count(1)

    def idFor(self, address: IAddress) -> str:
        """
        A stable id for a peer at C{address}: C{host:port} for TCP
        (C{[host]:port} for IPv6), C{unix#serial} for a UNIX socket peer (which
        has no name), C{kind#serial} for anything else.
        """
        if isinstance(address, (IPv4Address, IPv6Address)):
            return addressText(address)
        kind = "unix" if isinstance(address, UNIXAddress) else type(address).__name__.lower()
        return f"{kind}#{next(self._serials)}"
