"""ExecStart= and Environment= quoting: systemd must see exactly the argv labctl meant."""

from __future__ import annotations

import pytest

from labctl.encode import exec_word as quote_word, sd_assign as quote_assignment


@pytest.mark.parametrize("word,quoted", [
    ("plain", "plain"),
    ("/opt/x/bin/llama-server", "/opt/x/bin/llama-server"),
    ("two words", '"two words"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("100%", "100%%"),
    ("$HOME", "$$HOME"),
    ("back\\slash", '"back\\\\slash"'),
    ("semi;colon", '"semi;colon"'),
    ("", '""'),
])
def test_quote_word(word: str, quoted: str) -> None:
    assert quote_word(word) == quoted


def test_quote_assignment() -> None:
    assert quote_assignment("A", 'x "y" 5%') == '"A=x \\"y\\" 5%%"'
