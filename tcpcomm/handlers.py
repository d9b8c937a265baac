"""
The built-in handlers, and how C{--handler} finds a handler by name.

A handler implements L{tcpcomm.interfaces.IHandler}; C{--handler} names a
factory that is called once with the side's L{tcpcomm.interfaces.IHub} and
returns the handler.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.interfaces import IHandler, IHub, ISession

HandlerFactory = Callable[[IHub], IHandler]


@implementer(IHandler)
class BaseHandler:
    """
    A handler that does nothing: subclass it and define only what you use.
    The hub is C{self.hub}.
    """

    def __init__(self, hub: IHub) -> None:
        self.hub = hub

    def connected(self, session: ISession) -> None:
        pass

    def messageReceived(self, session: ISession, text: str) -> None:
        pass

    def disconnected(self, session: ISession, reason: Failure) -> None:
        pass


@implementer(IHandler)
class DelayedReply(BaseHandler):
    """
    The tutorial's conversation: greet on connect (when the side has a
    greeting), and answer each message with the reply text after
    C{--reply-delay} seconds.
    """

    def connected(self, session: ISession) -> None:
        greeting = self.hub.texts.greeting
        if greeting is not None:
            session.sendBytes(greeting.render(self.hub.clock.seconds()))

    def messageReceived(self, session: ISession, text: str) -> None:
        texts = self.hub.texts
        reply = texts.reply.render(self.hub.clock.seconds())
        if texts.replyDelay <= 0:
            session.sendBytes(reply)
        else:
            session.sendLater(texts.replyDelay, reply)


@implementer(IHandler)
class Echo(BaseHandler):
    """
    Send each message straight back.
    """

    def messageReceived(self, session: ISession, text: str) -> None:
        session.send(text)


@implementer(IHandler)
class Broadcast(BaseHandler):
    """
    Relay each message to every other connected peer (like C{ncat --broker}).
    """

    def messageReceived(self, session: ISession, text: str) -> None:
        self.hub.broadcast(text, exclude=session)


@implementer(IHandler)
class Chat(BaseHandler):
    """
    Relay each message to every other peer, after the sender's id (like
    C{ncat --chat}).
    """

    def messageReceived(self, session: ISession, text: str) -> None:
        self.hub.broadcast(f"{session.id}: {text}", exclude=session)


BUILT_IN: dict[str, HandlerFactory] = {
    "delayed-reply": DelayedReply,
    "echo": Echo,
    "broadcast": Broadcast,
    "chat": Chat,
}


class HandlerNotFound(ValueError):
    """
    C{--handler} names no built-in handler and no importable factory.
    """


def findHandler(name: str) -> HandlerFactory:
    """
    The handler factory C{name} stands for: a built-in name, or
    C{package.module:factory} for one of your own.
    """
    if name in BUILT_IN:
        return BUILT_IN[name]
    moduleName, sep, attribute = name.partition(":")
    if not sep or not moduleName or not attribute:
        raise HandlerNotFound(
            f"--handler {name!r} is neither a built-in ({', '.join(BUILT_IN)}) "
            "nor package.module:factory"
        )
    try:
        module = importlib.import_module(moduleName)
    except Exception as e:
        raise HandlerNotFound(f"--handler {name!r}: cannot import {moduleName}: {e}") from None
    factory = module
    for part in attribute.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise HandlerNotFound(f"--handler {name!r}: {moduleName} has no {attribute}") from None
    if not callable(factory):
        raise HandlerNotFound(f"--handler {name!r}: {attribute} is not callable")
    return factory
