"""The two small interfaces that keep bytes and conversation apart."""

from __future__ import annotations

from twisted.python.failure import Failure
from zope.interface import Attribute, Interface


class IPeer(Interface):
    """
    One connected peer as a conversation sees it: whole messages out, no sockets.
    """

    id = Attribute("A stable text id of the peer, such as C{'127.0.0.1:40522'}.")

    def sendMessage(message: bytes) -> None:
        """
        Send one message; the framing adds its delimiter or length prefix.
        """

    def close() -> None:
        """
        Close the connection once everything already sent has been written.
        """

    def abort() -> None:
        """
        Drop the connection at once, discarding anything not yet written.
        """


class IConversation(Interface):
    """
    What one side says on one connection, and when; it never touches sockets.
    """

    def connected() -> None:
        """
        The connection is up and the peer can be sent messages.
        """

    def messageReceived(message: bytes) -> None:
        """
        One whole message, with the framing removed, arrived from the peer.
        """

    def inputEnded() -> None:
        """
        The peer closed its sending side; nothing more will arrive, but it
        still reads. Close the connection once owed messages are sent.
        """

    def disconnected(reason: Failure) -> None:
        """
        The connection is gone; nothing may be sent any more.
        """
