"""A deterministic stand-in tokenizer: stable token counts without downloading a real one.

Words are cut into pieces of at most four characters and every punctuation mark is one token,
which lands close to BPE tokenizers on English prose (about 0.75 words per token).
"""

from __future__ import annotations

import random
import re
from typing import Any

_TOKEN_RE = re.compile(r"\w{1,4}|[^\w\s]")

# Chat templates wrap each message in role markers; vLLM counts them as prompt tokens too.
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_PER_REPLY = 3

# Output words are at most four characters, so each one counts as exactly one token.
_VOCABULARY = (
    "the of and to in is it that for on was with as at by be this from or an are not but had "
    "his her they you we can all one has more no so were when said what up out if its who "
    "time way day man new some like then now into make them than been only two old see work "
    "may well also back use made over such good each just most very much need data fast node "
    "gpu load"
).split()


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def _content_text(content: Any) -> str:
    """Text of a chat message's content: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def count_chat_tokens(messages: list[dict[str, Any]]) -> int:
    total = CHAT_TOKENS_PER_REPLY
    for message in messages:
        total += CHAT_TOKENS_PER_MESSAGE + count_tokens(_content_text(message.get("content")))
    return total


def count_prompt_tokens(prompt: str | list[int]) -> int:
    """A completions prompt: text, or token ids as vLLM also accepts."""
    if isinstance(prompt, str):
        return count_tokens(prompt)
    return len(prompt)


def next_token(rng: random.Random, position: int) -> str:
    word = rng.choice(_VOCABULARY)
    return word if position == 0 else " " + word
