"""
C{--config FILE}: settings in a TOML file, one table per side (C{[server]},
C{[client]}), whose keys are the long option names with their hyphens
(C{reply-delay = 0.5}); flags are booleans and repeatable options (C{listen})
arrays.

The file's settings become command-line words placed before the real
command line, so the command line wins and every value goes through its
option's own checks; a bad one is refused naming the file, the key and the
value.
"""

from __future__ import annotations

import difflib
import getopt
import json
import re
import tomllib
from collections.abc import Sequence
from typing import Any

from twisted.python import usage

#: The tables a config file may hold, one per side.
SIDES = ("server", "client")

#: Options that are no settings: C{config} cannot name another file.
NOT_KEYS = frozenset({"config", "help", "version"})


class ConfigError(usage.UsageError):
    """
    A config file that cannot be used; the message names the file, and the
    key and value at fault.
    """


def tomlText(value: Any) -> str:
    """
    C{value} as it would be written in TOML, to show it in messages.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(tomlText(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {tomlText(v)}" for k, v in value.items()) + "}"
    return str(value)


def readConfig(path: str) -> dict[str, dict[str, Any]]:
    """
    The tables of the TOML file at C{path}, by side. Anything but a
    C{[server]} or C{[client]} table is refused.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path!r} is not valid TOML: {e}") from None
    tables: dict[str, dict[str, Any]] = {}
    for name, value in document.items():
        if name in SIDES and isinstance(value, dict):
            tables[name] = value
        elif isinstance(value, dict):
            raise ConfigError(
                f"{path}: unknown table [{name}]{_guess(name, SIDES, '[{}]')}; "
                "a config file holds a [server] and a [client] table"
            )
        else:
            raise ConfigError(
                f"{path}: {name} = {tomlText(value)} is outside any table; "
                "put settings under [server] or [client]"
            )
    return tables


def _guess(name: str, choices: Sequence[str], shape: str = "{}") -> str:
    close = difflib.get_close_matches(name.replace("_", "-"), choices, n=1)
    return f" (did you mean {shape.format(close[0])}?)" if close else ""


def givenOptions(options: usage.Options, argv: Sequence[str]) -> dict[str, str] | None:
    """
    The options given in C{argv}, by long name, with the value each was
    last given (C{""} for flags); L{None} if C{argv} does not parse, which
    the real parse then reports.
    """
    try:
        pairs, _ = getopt.getopt(list(argv), options.shortOpt, options.longOpt)
    except getopt.error:
        return None
    given: dict[str, str] = {}
    for opt, arg in pairs:
        name = opt.lstrip("-")
        name = options.synonyms.get(name) or options.synonyms.get(name.replace("-", "_"), name)
        given[name] = arg
    return given


class ConfigFile:
    """
    One side's table of a config file, checked key by key, as command-line
    words.

    @ivar values: each key's value as the file gives it.
    @ivar words: each key's command-line words, such as
        C{["--reply-delay=0.5"]} (none for a flag set to C{false}).
    """

    def __init__(self, path: str, side: str, options: usage.Options) -> None:
        self.path = path
        self.side = side
        tables = readConfig(path)
        if side not in tables:
            raise ConfigError(f"--config {path!r} has no [{side}] table")
        self.values = tables[side]
        # A fresh copy to try each value on: opt_ methods such as opt_listen
        # store what they check.
        scratch = type(options)()
        repeatable = getattr(options, "repeatable", ())
        self.words = {
            key: self._words(scratch, repeatable, key, value) for key, value in self.values.items()
        }

    def where(self, key: str, value: Any) -> str:
        return f"{self.path}: [{self.side}] {key} = {tomlText(value)}"

    def _words(
        self, options: usage.Options, repeatable: Sequence[str], key: str, value: Any
    ) -> list[str]:
        where = self.where(key, value)
        takesValue = key + "=" in options.longOpt
        if key in NOT_KEYS or not (takesValue or key in options.longOpt):
            keys = [
                name.rstrip("=") for name in options.longOpt if name.rstrip("=") not in NOT_KEYS
            ]
            if key == "config":
                why = "a config file cannot name another one"
            else:
                why = (
                    f"not an option of `twistd tcpcomm {self.side}`{_guess(key, keys)}; keys are "
                    "its long options (see --help), and twistd's own options (pidfile, logfile, "
                    "...) go on twistd's command line"
                )
            raise ConfigError(f"{where}: {why}")
        if not takesValue:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} is a flag: true or false")
            return [f"--{key}"] if value else []
        if key in repeatable:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(
                    f"{where}: {key} may be given more than once, so it takes an array of "
                    f'strings, such as {key} = ["..."]'
                )
            for item in value:
                self._check(options, key, item, where)
            return [f"--{key}={item}" for item in value]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: {key} takes a string or a number")
        text = value if isinstance(value, str) else str(value)
        self._check(options, key, text, where)
        return [f"--{key}={text}"]

    def _check(self, options: usage.Options, key: str, text: str, where: str) -> None:
        """
        Put C{text} through the option's own coercer (or C{opt_} method).
        """
        handler = options._dispatch[key]
        try:
            if isinstance(handler, usage.CoerceParameter):
                handler.coerce(text)
            else:
                handler(key, text)
        except (ValueError, usage.UsageError) as e:
            raise ConfigError(f"{where}: {e}") from None

    def arguments(self, given: dict[str, str]) -> list[str]:
        """
        The file's settings as command-line words, less those of the options
        in C{given}: the command line wins, and a repeatable option given
        there replaces the file's instead of adding to it.
        """
        return [word for key, words in self.words.items() if key not in given for word in words]

    def blame(self, error: usage.UsageError, given: dict[str, str]) -> usage.UsageError:
        """
        C{error}, raised when the options were checked as a whole, naming the
        file's key if it is about one the command line did not override.
        """
        message = str(error)
        named = []  # (where the message names it, key): the first named is at fault
        for key in self.values:
            found = re.search(rf"--{re.escape(key)}(?![\w-])", message)
            if key not in given and found:
                named.append((found.start(), key))
        if named:
            key = min(named)[1]
            return ConfigError(f"{self.where(key, self.values[key])}: {message}")
        return usage.UsageError(f"{message} (with the settings of --config {self.path!r})")
