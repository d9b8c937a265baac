"""The tcpcomm command line (placeholder until written)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("not written yet")
