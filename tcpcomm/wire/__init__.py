"""
Bytes and connections: framing, the connection's lifecycle and limits,
liveness, eager writes, TLS settings and addresses. The wire reaches the
rest only through L{tcpcomm.interfaces}: each connection's messages go to
an L{tcpcomm.interfaces.IConversation}, which the factory gets from the
side it serves (an L{tcpcomm.interfaces.ISide}), with the clock and the
counters (L{tcpcomm.interfaces.IStats}).
"""
