"""
Reading an admin token file: one function for the daemon's
C{--admin-token-file} and the C{tcpcomm} command's C{--token-file}, so that
both accept and refuse exactly the same files.
"""

from __future__ import annotations

#: The longest token file read: a token is a line, and a path given by
#: mistake (a log, C{/dev/zero}) must not be read to its end.
MAX_TOKEN_FILE = 4096


class TokenFileError(ValueError):
    """
    A token file that cannot be used, and why; its message names the file.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"bad token file {path!r}: {reason}")
        self.path = path
        self.reason = reason


def readTokenFile(path: str) -> str:
    """
    The token in the file at C{path}: its one line, without the whitespace
    around it or a UTF-8 byte order mark (which editors on Windows write).
    A token travels in an HTTP header (C{Authorization: Bearer TOKEN}), so
    only printable ASCII without spaces can be sent and compared the same
    way by every client; anything else is refused here rather than
    becoming a puzzling 401 or an encoding error in the client.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE + 1)
    except OSError as e:
        raise TokenFileError(path, f"cannot read it: {e.strerror or e}") from None
    if len(data) > MAX_TOKEN_FILE:
        raise TokenFileError(path, f"it is over {MAX_TOKEN_FILE} bytes; it must hold one token")
    try:
        token = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise TokenFileError(path, "it is not UTF-8 text") from None
    if not token:
        raise TokenFileError(path, "it is empty; it must hold one token")
    for character in token:
        if character.isspace():
            raise TokenFileError(path, "it must hold one token, without spaces")
        if not "!" <= character <= "~":
            raise TokenFileError(
                path,
                f"the token holds {character!r}, which is not printable ASCII "
                "(a token is sent in an HTTP header)",
            )
    return token
