"""tcpcomm: a framed TCP message server and a self-healing client, run by twistd."""

__version__ = "0.1.0"
