"""The TPM reservation a request makes at admission (in memory, no servers): the larger of its
max_tokens and max_completion_tokens, integers only, else the configured default."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.proxy import tokens_to_reserve


def reserve(payload: dict[str, Any], default: int = 1024) -> int:
    return tokens_to_reserve(payload, default)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"model":"m","max_tokens":16}', 16),
        (b'{"model":"m","max_completion_tokens":40}', 40),
        (b'{"model":"m","max_tokens":16,"max_completion_tokens":40}', 40),
        (b'{"model":"m","max_tokens":50,"max_completion_tokens":40}', 50),
        (b'{"model":"m","max_tokens":0}', 0),
        (b'{"model":"m","max_tokens":-5}', -5),  # admit() clamps it to 0
        (b'{"model":"m","max_tokens":-5,"max_completion_tokens":-1}', -1),
        (b'{"model":"m"}', 1024),
        (b'{"model":"m","max_tokens":null}', 1024),
        (b'{"model":"m","max_tokens":true}', 1024),  # a bool is no count
        (b'{"model":"m","max_tokens":false,"max_completion_tokens":7}', 7),
        (b'{"model":"m","max_tokens":"16"}', 1024),
        (b'{"model":"m","max_tokens":16.0}', 1024),
        (b'{"model":"m","max_tokens":"x","max_completion_tokens":12}', 12),
    ],
)
def test_reserve_is_the_largest_integer_asked(body: bytes, expected: int) -> None:
    assert reserve(orjson.loads(body)) == expected


def test_reserve_without_a_count_is_the_default_given() -> None:
    assert reserve({"model": "m"}, default=77) == 77
