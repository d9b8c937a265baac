"""
Who is connected and what they say: the hub of a side, its sessions, and
its registry of them. Nothing here touches a socket: sessions talk to their
connection through L{tcpcomm.interfaces.IPeer}.
"""
