"""
What each side says and when: the tutorial's timed replies, without blocking.

A L{Script} holds what every connection of one side shares (texts, delay,
clock); a L{DelayedReply} is one connection's conversation. Neither touches a
socket: they talk to an L{IPeer}.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.interfaces import IConversation, IPeer
from tcpcomm.templates import Template

log = Logger()


class Script:
    """
    The settings one side's conversations share: texts, reply delay, clock.

    @ivar greeting: sent once on connect (the client's), or L{None}.
    @ivar reply: sent C{replyDelay} seconds after each message.
    @ivar errorReply: sent at once for a message that does not decode.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        encoding: str,
        replyDelay: float,
        reply: Template,
        errorReply: Template,
        greeting: Template | None = None,
    ) -> None:
        self.clock = clock
        self.encoding = encoding
        self.replyDelay = replyDelay
        self.reply = reply
        self.errorReply = errorReply
        self.greeting = greeting

    def conversationFor(self, peer: IPeer) -> DelayedReply:
        """
        A new conversation with C{peer}.
        """
        return DelayedReply(self, peer)


@implementer(IConversation)
class DelayedReply:
    """
    Log each message and answer it after the script's delay, on the clock.

    Replies still owed when the peer stops sending are delivered before the
    connection is closed; replies owed when the connection is lost are
    cancelled.
    """

    __slots__ = ("_script", "_peer", "_pending", "_inputEnded")

    def __init__(self, script: Script, peer: IPeer) -> None:
        self._script = script
        self._peer = peer
        self._pending: deque[IDelayedCall] = deque()
        self._inputEnded = False

    def connected(self) -> None:
        greeting = self._script.greeting
        if greeting is not None:
            self._peer.sendMessage(greeting.render(self._script.clock.seconds()))

    def messageReceived(self, message: bytes) -> None:
        script = self._script
        try:
            text = message.decode(script.encoding)
        except UnicodeDecodeError as e:
            log.warn(
                "undecodable message from {peer}: {data!r} ({reason})",
                event="undecodable",
                peer=self._peer.id,
                data=message,
                reason=str(e),
            )
            self._peer.sendMessage(script.errorReply.render(script.clock.seconds()))
            return
        log.info("message from {peer}: {text}", event="message", peer=self._peer.id, text=text)
        reply = script.reply.render(script.clock.seconds())
        if script.replyDelay <= 0:
            self._peer.sendMessage(reply)
        else:
            self._pending.append(script.clock.callLater(script.replyDelay, self._sendOwed, reply))

    def _sendOwed(self, reply: bytes) -> None:
        # Calls due at the same instant may run in any order: drop every
        # finished call from the front, so the queue is empty exactly when no
        # reply is owed.
        pending = self._pending
        while pending and not pending[0].active():
            pending.popleft()
        self._peer.sendMessage(reply)
        if self._inputEnded and not pending:
            self._peer.close()

    def inputEnded(self) -> None:
        self._inputEnded = True
        if not self._pending:
            self._peer.close()

    def disconnected(self, reason: Failure) -> None:
        pending, self._pending = self._pending, deque()
        for call in pending:
            if call.active():
                call.cancel()
