"""
Bytes and connections: framing, the connection's lifecycle and limits,
liveness, eager writes, TLS settings and addresses. It hands each
connection's messages to an L{tcpcomm.interfaces.IConversation}.
"""
