"""What may be printed: text from outside (server answers, image names, library errors) made safe
for a terminal line or a log line. Applied where text leaves the process (terminal lines, the log
file, JSON errors, report messages), whatever the text's source: a server that echoes our
request headers back in an error must not get our credentials printed.

Only `re`, which the head start loads anyway: it loads this before anything else.
"""

from __future__ import annotations

import re

MASK = "***"

# Replaced, never changed in place: threads read it without a lock.
_secrets: frozenset[str] = frozenset()

# Shapes credentials take in text, whoever wrote it. Header values run to the end of the line or
# a quote (servers quote them in JSON and Go's %q); URL credentials end at the `@`.
_PATTERNS = [
    (re.compile(r"(?i)\b((?:proxy-)?authorization\s*[:=]\s*)[^\r\n\"',}]+"), rf"\1{MASK}"),
    # Capitalised as in a header, so that prose ("basic authentication") is left alone.
    (re.compile(r"\b(Basic|Bearer)(\s+)[A-Za-z0-9._~+/=-]{4,}"), rf"\1\2{MASK}"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s\"']*@"), rf"\1{MASK}@"),
]

# C0 controls, DEL and C1 controls: a newline could forge a line, an escape sequence could
# rewrite the terminal. Tabs are shown escaped as well, to keep each message one visible line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def register_secret(value: str | None) -> None:
    """Never print this value (a password, a token), wherever it turns up. Process-wide."""
    global _secrets
    if value and len(value) >= 3:  # shorter ones would mask ordinary words
        _secrets = _secrets | {value}


def redact(text: str) -> str:
    """The text with every registered secret and anything shaped like a credential masked."""
    for secret in sorted(_secrets, key=len, reverse=True):  # one containing another goes first
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def escape(text: str) -> str:
    """Control characters as visible escapes (`\\n`, `\\x1b`): the text stays on one line."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def printable(text: str) -> str:
    """One line safe to print: credentials masked, control characters escaped."""
    return escape(redact(text))


def printable_lines(text: str) -> list[str]:
    """Several lines (a container's log, a traceback), each made printable."""
    return [printable(line) for line in redact(text).splitlines()]
