"""The output boundary's one redaction function: known secrets and credential shapes masked,
control characters escaped, prose left alone."""

from __future__ import annotations

import logging

import pytest

from scanner.redact import escape, printable, printable_lines, redact, register_secret


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: ***"),
        ("proxy-authorization=Bearer abc.def", "proxy-authorization=***"),
        (
            '{"headers": {"Authorization": "Bearer eyJ0eXAi.x.y"}}',
            '{"headers": {"Authorization": "Bearer ***"}}',
        ),
        ("map[Authorization:[Basic dXNlcjpwYXNz]]", "map[Authorization:***"),
        ("retrying with Basic dXNlcjpwYXNz", "retrying with Basic ***"),
        ("GET https://ci:tok3n@registry.example:5000/v2/", "GET https://***@registry.example:5000/v2/"),
        ("ssh://git@host/x", "ssh://***@host/x"),
        ("credentials are sent as basic authentication", "credentials are sent as basic authentication"),
        ("http://127.0.0.1:6060/v1/layers", "http://127.0.0.1:6060/v1/layers"),
    ],
)
def test_credential_shapes(text, shown):
    assert redact(text) == shown


def test_registered_secrets_are_masked_wherever_they_turn_up():
    register_secret("pa55-w0rd-from-a-registry")
    register_secret("pa55")  # a shorter one inside a longer one: the longer goes first
    register_secret("")  # nothing to register
    assert redact("login failed for token pa55-w0rd-from-a-registry!") == "login failed for token ***!"
    assert "pa55" not in redact("pa55 and pa55-w0rd-from-a-registry")


def test_control_characters_become_visible_escapes():
    assert escape("a\nb\r\tc\x1b[31m\x7f\x85é") == "a\\nb\\r\\tc\\x1b[31m\\x7f\\x85é"
    assert printable("x\nAuthorization: Basic abcd\ny") == "x\\nAuthorization: ***\\ny"
    assert printable_lines("one\ntwo\x1b") == ["one", "two\\x1b"]


def test_log_records_are_redacted_and_kept_on_their_line(tmp_path):
    from scanner.cli import _setup_log, log

    register_secret("s3cr3t-in-log")
    handler = _setup_log(str(tmp_path / "debug.log"))
    assert handler is not None
    try:
        log.debug("server said %s", "no\nFAKE RECORD s3cr3t-in-log")
        try:
            raise ValueError("boom\nAuthorization: Bearer abcdefgh")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        handler.close()
    text = (tmp_path / "debug.log").read_text()
    assert "s3cr3t-in-log" not in text and "abcdefgh" not in text
    assert "server said no\\nFAKE RECORD ***" in text
    lines = text.splitlines()
    assert all(line[:4].isdigit() or line.startswith("    ") for line in lines), text
    assert logging.getLogger().handlers  # no last-resort handler printing to stderr
