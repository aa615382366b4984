"""Whatever a client sends, the gateway answers with a clear 4xx, never a 500."""

from __future__ import annotations

import asyncio
import json

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import Seeded
from tests.gateway.conftest import RunningGateway


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# Bodies shaped like requests (often with the usual fields), for a model nobody serves.
request_like = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just("nobody-serves-this"), json_values),
        "messages": json_values,
        "prompt": json_values,
        "input": json_values,
        "stream": json_values,
        "stream_options": json_values,
        "user": json_values,
    },
)
raw_bodies = st.one_of(
    request_like.map(_dumps),
    json_values.map(_dumps),
    st.binary(max_size=64),
)


async def test_arbitrary_bodies_get_4xx(gateway: RunningGateway, seeded: Seeded) -> None:
    headers = {"Authorization": f"Bearer {seeded.api_key}", "content-type": "application/json"}

    @settings(max_examples=150, deadline=None)
    @given(
        path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]),
        body=raw_bodies,
    )
    def check(path: str, body: bytes) -> None:
        response = client.post(path, content=body)
        assert response.status_code in (400, 404), (body, response.text)
        error = response.json()["error"]
        assert error["message"] and "code" in error

    # Hypothesis drives a blocking client from a thread; the gateway runs in this event loop.
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:
        await asyncio.to_thread(check)
