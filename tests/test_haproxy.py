"""
C{--proxy-protocol} end to end: real tcpcomm servers behind a real HAProxy
running the sample C{contrib/haproxy/haproxy.cfg}, and a direct peer that
sends no header.
"""

from __future__ import annotations

import socket
import ssl

from twisted.trial.unittest import SynchronousTestCase

from .certs import Authority
from .haproxy import HAProxy, Ports
from .processes import WAIT, Twistd, assertCleanLog, readUntilClosed, scratch
from .test_faults import getJSON, readLine, waitUntil

#: Where the test's clients connect from: loopback, but not the address
#: HAProxy connects to the nodes from (127.0.0.1), so the two cannot be
#: mistaken for each other.
CLIENT_HOST = "127.0.0.5"


def node(case: SynchronousTestCase, port: int, admin: int, *args: str) -> Twistd:
    """
    A tcpcomm server behind HAProxy: C{--proxy-protocol} on C{port}, its
    admin API on C{admin}, answering at once.
    """
    server = Twistd(
        case,
        "tcpcomm",
        "server",
        "-p",
        str(port),
        "-i",
        "127.0.0.1",
        "--proxy-protocol",
        "--reply-delay",
        "0",
        "--admin",
        f"tcp:{admin}:interface=127.0.0.1",
        *args,
    )
    server.waitFor(r"listening on 127\.0\.0\.1:\d+ \(admin API")
    return server


def dialFront(case: SynchronousTestCase, ports: Ports) -> socket.socket:
    """
    A client connected to HAProxy's front from L{CLIENT_HOST}, closed after the test.
    """
    sock = socket.create_connection(("127.0.0.1", ports.front), WAIT, (CLIENT_HOST, 0))
    case.addCleanup(sock.close)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def peersOf(admin: int) -> dict[str, str]:
    """
    A node's clients, id by address (C{peer}), from its admin API.
    """
    return {c["peer"]: c["id"] for c in getJSON(admin, "/clients")}


class HAProxyFleetTests(SynchronousTestCase):
    """
    Three nodes behind HAProxy, as the sample config runs them.
    """

    def test_realAddressesHealthAndNodeOut(self) -> None:
        """Through HAProxy each node lists its clients under their real addresses, health checks
        on /healthz pass, and a node that stops is taken out while the others serve."""
        ports = Ports(nodes=3)
        nodes = [node(self, port, admin) for port, admin in ports.node]
        front = HAProxy(self, ports)
        front.waitForStates({"node1": "UP", "node2": "UP", "node3": "UP"})

        clients = []
        for _ in range(6):
            sock = dialFront(self, ports)
            sock.sendall(b"hi\n")
            self.assertTrue(readLine(sock).startswith(b"response from server"))
            clients.append(sock)
        expected = {address(s) for s in clients}
        self.assertTrue(all(a.startswith(CLIENT_HOST + ":") for a in expected))

        def everyone() -> list[dict[str, str]] | None:
            seen = [peersOf(admin) for _, admin in ports.node]
            union = set().union(*seen)
            return seen if union == expected and sum(map(len, seen)) == 6 else None

        held = waitUntil("all six clients listed by their addresses", everyone)
        for peers in held:
            self.assertTrue(peers, "leastconn gives every node clients")
            for peer, peerId in peers.items():
                self.assertEqual(peerId, peer)
        for server in nodes:
            self.assertNotIn("connected 127.0.0.1:", server.output())

        nodes[2].stop()
        front.waitForStates({"node1": "UP", "node2": "UP", "node3": "DOWN"})
        later = []
        for _ in range(3):
            sock = dialFront(self, ports)
            sock.sendall(b"hi\n")
            self.assertTrue(readLine(sock).startswith(b"response from server"))
            later.append(address(sock))
        served = set(peersOf(ports.node[0][1])) | set(peersOf(ports.node[1][1]))
        self.assertTrue(set(later) <= served, (later, served))
        for server in nodes:
            assertCleanLog(self, server.output())

    def test_mutualTLSPassthrough(self) -> None:
        """Through HAProxy in TCP passthrough a node ends the client's TLS after the PROXY header
        and names the client by its certificate, at its real address."""
        folder = scratch(self)
        ca = Authority(folder, "fleet")
        serverCert, serverKey = ca.issue("localhost", ["localhost", "127.0.0.1"])
        clientCert, clientKey = ca.issue("agent-7", [], client=True)
        ports = Ports(nodes=1)
        [(port, admin)] = ports.node
        server = node(
            self,
            port,
            admin,
            "--tls-cert",
            serverCert,
            "--tls-key",
            serverKey,
            "--tls-client-ca",
            ca.path,
            "--client-id",
            "tls",
        )
        front = HAProxy(self, ports)
        front.waitForStates({"node1": "UP"})

        context = ssl.create_default_context(cafile=ca.path)
        context.load_cert_chain(clientCert, clientKey)
        raw = dialFront(self, ports)
        where = address(raw)
        sock = context.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(sock.close)
        sock.sendall(b"hi\n")
        self.assertTrue(readLine(sock).startswith(b"response from server"))
        self.assertEqual(waitUntil("agent-7 listed", lambda: peersOf(admin)), {where: "agent-7"})
        server.waitFor(rf"secured {where}: certificate agent-7")
        server.waitFor(r"message from agent-7: hi")
        assertCleanLog(self, server.output())

    def test_sendProxyV1(self) -> None:
        """HAProxy's text header (send-proxy, v1) names the client as well as v2 does."""
        ports = Ports(nodes=1)
        [(port, admin)] = ports.node
        server = node(self, port, admin)
        front = HAProxy(self, ports, sendProxy="send-proxy")
        front.waitForStates({"node1": "UP"})
        sock = dialFront(self, ports)
        sock.sendall(b"hi\n")
        self.assertTrue(readLine(sock).startswith(b"response from server"))
        self.assertEqual(peersOf(admin), {address(sock): address(sock)})
        assertCleanLog(self, server.output())


class ProxyProtocolDirectTests(SynchronousTestCase):
    """
    A C{--proxy-protocol} server reached without HAProxy.
    """

    def test_directWithoutHeaderRefused(self) -> None:
        """A direct connection that sends no PROXY header is closed unanswered and logged; one
        that sends a header is served under the address it names."""
        ports = Ports(nodes=1)
        [(port, admin)] = ports.node
        server = node(self, port, admin)
        sock = socket.create_connection(("127.0.0.1", port), WAIT)
        self.addCleanup(sock.close)
        sock.sendall(b"hi\n")
        try:
            self.assertEqual(readUntilClosed(sock), b"")
        except ConnectionResetError:
            pass  # dropped at once: what it sent was read, nothing was answered
        server.waitFor(r"refusing 127\.0\.0\.1:\d+: not a PROXY header \(--proxy-protocol\)")
        self.assertEqual(getJSON(admin, "/clients"), [])

        proxied = socket.create_connection(("127.0.0.1", port), WAIT)
        self.addCleanup(proxied.close)
        proxied.sendall(b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 9527\r\nhi\n")
        self.assertTrue(readLine(proxied).startswith(b"response from server"))
        self.assertEqual(peersOf(admin), {"192.0.2.10:40000": "192.0.2.10:40000"})
        server.waitFor(r"message from 192\.0\.2\.10:40000: hi")
        assertCleanLog(self, server.output())
