"""
The fleet: several servers that share one registry and reach each other's
clients through a Redis backplane (C{--backplane}).
"""
