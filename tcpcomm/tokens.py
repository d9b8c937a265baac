"""
Reading token files: one function for the daemon's C{--admin-token-file},
the C{tcpcomm} command's and the client's C{--token-file}, so that all
accept and refuse exactly the same files; and the server's
C{--client-tokens}, whose tokens follow the same rules.
"""

from __future__ import annotations

import re

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


#: What a client name may be (C{--client-id hello}): what is safe in a log
#: line, a JSON key and, percent-encoded, a URL path.
NAME = re.compile(r"[A-Za-z0-9._\-@:]{1,128}")
NAME_RULE = "1 to 128 characters from A-Z a-z 0-9 . _ - @ :"

#: The longest C{--client-tokens} file read.
MAX_CLIENT_TOKENS_FILE = 16 << 20


def isName(name: str) -> bool:
    """
    Whether C{name} is a valid client name.
    """
    return NAME.fullmatch(name) is not None


def _badCharacter(token: str) -> str | None:
    """
    Why C{token} cannot be sent and compared the same way by every client,
    or L{None}.
    """
    for character in token:
        if character.isspace():
            return "without spaces"
        if not "!" <= character <= "~":
            return f"the token holds {character!r}, which is not printable ASCII"
    return None


def _read(path: str, limit: int, holds: str = "") -> bytes:
    # The bytes of the file at path, at most limit of them; holds says
    # what the file is for, in the error of a file over the limit.
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise TokenFileError(path, f"cannot read it: {e.strerror or e}") from None
    if len(data) > limit:
        raise TokenFileError(path, f"it is over {limit} bytes{holds}")
    return data


def readClientTokens(path: str) -> dict[str, str]:
    """
    The C{NAME TOKEN} lines of the file at C{path} (C{--client-tokens}),
    as a token for each name, as written (plain, or C{sha256:<hex>});
    blank lines and lines starting with C{#} are skipped. A line that is
    not of that form is refused with its number, never its token.
    """
    try:
        text = _read(path, MAX_CLIENT_TOKENS_FILE).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TokenFileError(path, "it is not UTF-8 text") from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) != 2:
            raise TokenFileError(path, f"line {number} is not 'NAME TOKEN'")
        name, token = words
        if not isName(name):
            raise TokenFileError(path, f"line {number}: {name!r} is not a name ({NAME_RULE})")
        if name in tokens:
            raise TokenFileError(path, f"line {number}: {name!r} is given a token twice")
        bad = _badCharacter(token)
        if bad is not None:
            raise TokenFileError(path, f"line {number}: the token must be printable ASCII, {bad}")
        if token.startswith("sha256:"):
            digest = token[len("sha256:") :].lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise TokenFileError(
                    path, f"line {number}: sha256: must be followed by 64 hexadecimal digits"
                )
            token = "sha256:" + digest
        tokens[name] = token
    return tokens


def readTokenFile(path: str) -> str:
    """
    The token in the file at C{path}: its one line, without the whitespace
    around it or a UTF-8 byte order mark (which editors on Windows write).
    A token travels in an HTTP header (C{Authorization: Bearer TOKEN}), so
    only printable ASCII without spaces can be sent and compared the same
    way by every client; anything else is refused here rather than
    becoming a puzzling 401 or an encoding error in the client.
    """
    data = _read(path, MAX_TOKEN_FILE, "; it must hold one token")
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
