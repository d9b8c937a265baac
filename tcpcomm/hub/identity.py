"""
Who a client is (C{--client-id}): its address, the common name of its
verified TLS certificate, or the name its first message claims
(C{hello NAME [TOKEN]}), checked against C{--client-tokens}.

A named session is unknown to the hub until it is identified: the
conversation of a new connection is a L{Hello}, which hands the framing
over to the session itself once the hello is good. So the message path
after that is exactly the one without identities: nothing is checked per
message.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.hub.hub import Hub
from tcpcomm.hub.session import Session
from tcpcomm.interfaces import IConversation
from tcpcomm.logs import RateLimiter
from tcpcomm.tokens import NAME_RULE, isName

__all__ = ["NAME_RULE", "ClientTokens", "HelloIdentity", "isName", "parseHello", "tlsIdentity"]

log = Logger()

#: The form of a hashed token in C{--client-tokens}.
SHA256 = "sha256:"


class ClientTokens:
    """
    The token each name must present (C{--client-tokens}), as written in
    the file: plain, or C{sha256:<hex>} of the token.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = dict(tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClientTokens) and other._tokens == self._tokens

    def __hash__(self) -> int:
        return hash(frozenset(self._tokens.items()))

    def __len__(self) -> int:
        return len(self._tokens)

    def entry(self, name: str) -> str | None:
        """
        What the file says for C{name}, if anything.
        """
        return self._tokens.get(name)

    def check(self, name: str, token: str | None) -> bool:
        """
        Whether C{token} is C{name}'s, compared in constant time.
        """
        expected = self._tokens.get(name)
        if expected is None or token is None:
            return False
        given = token.encode("utf-8")
        if expected.startswith(SHA256):
            return hmac.compare_digest(
                hashlib.sha256(given).hexdigest().encode(), expected[len(SHA256) :].encode()
            )
        return hmac.compare_digest(given, expected.encode("utf-8"))

    def changedFrom(self, old: ClientTokens | None) -> Callable[[str], bool]:
        """
        Whether a client named so, identified under C{old}, holds no valid
        token under these: its entry was removed or changed (with no
        tokens before, nobody presented one).
        """
        if old is None:
            return lambda name: True
        return lambda name: old.entry(name) != self.entry(name)


def parseHello(text: str) -> tuple[str, str | None] | None:
    """
    The name and token of C{hello NAME [TOKEN]}, or L{None} if C{text} is
    not of that form.
    """
    words = text.split(" ")
    if words[0] != "hello" or not 2 <= len(words) <= 3 or "" in words:
        return None
    return words[1], (words[2] if len(words) == 3 else None)


class HelloIdentity:
    """
    C{--client-id hello}: the settings, and the refusals' log limiter.
    """

    def __init__(self, hub: Hub, timeout: float, tokens: ClientTokens | None = None) -> None:
        self.hub = hub
        self.timeout = timeout
        self.tokens = tokens
        #: A storm of bad hellos logs one line per kind per 10 s.
        self.refusedLines = RateLimiter("hello-refused", "refused hellos", hub.clock, keyName="why")

    def __call__(self, session: Session) -> IConversation:
        return Hello(self, session)

    def setTokens(self, tokens: ClientTokens | None) -> None:
        """
        Use C{tokens} from now on (a reload), and disconnect each client
        whose token was removed or changed.
        """
        old, self.tokens = self.tokens, tokens
        if tokens is None:
            return
        changed = tokens.changedFrom(old)
        for session in self.hub.registry:
            if changed(session.id):
                log.warn(
                    "disconnecting {peer}: its token was removed or changed in --client-tokens",
                    event="token-revoked",
                    peer=session.id,
                    address=session.address,
                )
                session.close()


@implementer(IConversation)
class Hello:
    """
    The conversation of a connection until its hello: the first message
    names the client; then the session takes over the connection.
    """

    def __init__(self, identity: HelloIdentity, session: Session) -> None:
        self.identity = identity
        self.session = session
        self._deadline: IDelayedCall | None = None
        self._done = False

    def connected(self) -> None:
        identity = self.identity
        identity.hub.unidentified += 1
        if identity.timeout > 0:
            clock: IReactorTime = identity.hub.clock
            self._deadline = clock.callLater(identity.timeout, self._timedOut)

    def messagesReceived(self, messages: list[bytes], now: float) -> None:
        for i, message in enumerate(messages):
            if message:  # empty ones are heartbeats
                self._hello(message, messages[i + 1 :], now)
                return

    def _hello(self, message: bytes, rest: list[bytes], now: float) -> None:
        try:
            hello = parseHello(message.decode("utf-8"))
        except UnicodeDecodeError:
            hello = None
        if hello is None:
            self._refuse("no-hello", "the first message must be: hello NAME [TOKEN]")
            return
        name, token = hello
        if not isName(name):
            self._refuse("invalid-name", f"invalid name; a name is {NAME_RULE}")
            return
        tokens = self.identity.tokens
        if tokens is not None and not tokens.check(name, token):
            self._refuse("wrong-token", f"wrong or missing token for {name}", name)
            return
        self._stop()
        session = self.session
        peer = session.peer
        session.id = peer.id = name
        peer.conversation = session  # from now on the framing talks to the session
        log.info(
            "identified {peer} at {address}",
            event="identified",
            peer=name,
            address=session.address,
        )
        session.connected()
        if rest and not peer.closing:
            session.messagesReceived(rest, now)

    def _timedOut(self) -> None:
        self._deadline = None
        self._refuse(
            "hello-timeout", f"no hello within {self.identity.timeout:g} s (--hello-timeout)"
        )

    def _refuse(self, why: str, reason: str, name: str | None = None) -> None:
        """
        Tell the peer why, in its framing, and close: it never reaches the
        handler. The token is never logged.
        """
        self._stop()
        peer = self.session.peer
        if peer.closing:
            return
        identity = self.identity
        if identity.refusedLines.allow(why):
            log.warn(
                "refusing {peer}: {reason}",
                event="hello-refused",
                peer=peer.id,
                address=peer.address,
                why=why,
                name=name,
                reason=reason,
            )
        peer.sendMessage(f"error: {reason}".encode())
        peer.close()

    def _stop(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
        if not self._done:
            self._done = True
            self.identity.hub.unidentified -= 1

    def inputEnded(self) -> None:
        self.session.peer.close()

    def disconnected(self, reason: Failure) -> None:
        self._stop()


def tlsIdentity(session: Session) -> IConversation:
    """
    C{--client-id tls}: the common name of the verified client certificate
    is the id. The handshake already refuses a certificate without a usable
    one (L{tcpcomm.wire.tls.NamedClientOptions}); should one get through,
    it is dropped before the connection can carry a message.
    """
    peer = session.peer
    name = peer.tlsSubject
    if name is not None and isName(name):
        session.id = peer.id = name
        return session
    return NoName(session)


@implementer(IConversation)
class NoName:
    """
    A TLS client whose certificate has no common name usable as an id:
    logged and dropped.
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def connected(self) -> None:
        peer = self.session.peer
        log.warn(
            "refusing {peer}: its certificate's common name {subject!r} is not a usable id "
            "(--client-id tls; a name is {rule})",
            event="tls-no-name",
            peer=peer.id,
            address=peer.address,
            subject=peer.tlsSubject,
            rule=NAME_RULE,
        )
        peer.abort()

    def messagesReceived(self, messages: list[bytes], now: float) -> None:
        pass

    def inputEnded(self) -> None:
        pass

    def disconnected(self, reason: Failure) -> None:
        pass
