"""The fleet benchmark's workloads: each a list of requests with their send times (open loop).

Text is made of four-letter words, which the simulator's tokenizer counts as one token each, so a
"6,000-token context" is 6,000 prompt tokens at the engine. Multi-turn conversations are closed
loop per conversation: a turn is sent a think time after the previous answer, with that answer in
its history (`Turn.follows`).
"""

from __future__ import annotations

import csv
import random
import string
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


def words(rng: random.Random, count: int) -> str:
    letters = string.ascii_lowercase
    return " ".join("".join(rng.choices(letters, k=4)) for _ in range(count))


@dataclass
class Turn:
    at: float  # seconds after the start (for a follow-up turn: after the previous answer)
    messages: list[dict[str, Any]]
    max_tokens: int
    user: str
    follows: Turn | None = None  # the previous turn of the same conversation
    next_user_message: str | None = None  # for follow-ups: appended after the previous answer
    followers: list[Turn] = field(default_factory=list)


@dataclass
class Workload:
    name: str
    description: str
    turns: list[Turn]  # the first turns, in send order; follow-ups hang off `followers`

    def count(self) -> int:
        total, stack = 0, list(self.turns)
        while stack:
            turn = stack.pop()
            total += 1
            stack.extend(turn.followers)
        return total


def shared_prefix(
    tenants: int, context_tokens: int, question_tokens: int, users: int, rate: float,
    seconds: float, max_tokens: int, seed: int = 1,
) -> Workload:  # fmt: skip
    """Multi-tenant chat in llm-d's shape: each tenant's long context (system prompt) shared by
    its users, a fresh question per request; Poisson arrivals, tenants chosen uniformly."""
    rng = random.Random(seed)
    contexts = [words(rng, context_tokens) for _ in range(tenants)]
    turns, now = [], 0.0
    while True:
        now += rng.expovariate(rate)
        if now > seconds:
            break
        tenant = rng.randrange(tenants)
        messages = [
            {"role": "system", "content": contexts[tenant]},
            {"role": "user", "content": words(rng, question_tokens)},
        ]
        user = f"tenant{tenant}-user{rng.randrange(users)}"
        turns.append(Turn(now, messages, max_tokens, user))
    return Workload(
        "shared_prefix",
        f"{tenants} tenants x {context_tokens}-token context, {users} users each, "
        f"{question_tokens}-token questions, Poisson {rate:g} req/s for {seconds:g} s, "
        f"{max_tokens} output tokens",
        turns,
    )


def conversations(
    count: int, system_tokens: int, message_tokens: int, turns_each: int, think_s: float,
    seconds: float, max_tokens: int, seed: int = 2,
) -> Workload:  # fmt: skip
    """Multi-turn chats whose history grows: each turn resends the whole conversation so far."""
    rng = random.Random(seed)
    firsts = []
    for index in range(count):
        system = words(rng, system_tokens)
        user = f"conversation{index}"
        first = Turn(
            rng.uniform(0, seconds / 2),
            [
                {"role": "system", "content": system},
                {"role": "user", "content": words(rng, message_tokens)},
            ],
            max_tokens,
            user,
        )
        previous = first
        for _ in range(turns_each - 1):
            follow = Turn(
                rng.expovariate(1 / think_s),
                [],
                max_tokens,
                user,
                follows=previous,
                next_user_message=words(rng, message_tokens),
            )
            previous.followers.append(follow)
            previous = follow
        firsts.append(first)
    firsts.sort(key=lambda turn: turn.at)
    return Workload(
        "conversations",
        f"{count} conversations x {turns_each} turns, {system_tokens}-token system prompt, "
        f"{message_tokens}-token messages, think time {think_s:g} s (exponential), starts over "
        f"{seconds / 2:g} s, {max_tokens} output tokens",
        firsts,
    )


def azure_conversation_trace(
    path: Path, requests: int, speedup: float, max_tokens_cap: int, max_context: int,
    seed: int = 3,
) -> Workload:  # fmt: skip
    """The Azure LLM inference trace (conversation service): its arrival times, context and
    generated lengths; the text is random, so no two requests share a prefix."""
    rng = random.Random(seed)
    turns = []
    with path.open() as handle:
        rows = csv.DictReader(handle)
        start: datetime | None = None
        for row in rows:
            if len(turns) == requests:
                break
            stamp = datetime.fromisoformat(row["TIMESTAMP"][:26])
            start = start or stamp
            context = min(int(row["ContextTokens"]), max_context)
            turns.append(
                Turn(
                    (stamp - start).total_seconds() / speedup,
                    [{"role": "user", "content": words(rng, max(1, context - 8))}],
                    max(1, min(int(row["GeneratedTokens"]), max_tokens_cap)),
                    f"trace{len(turns)}",
                )
            )
    span = turns[-1].at if turns else 0.0
    return Workload(
        "azure_conv_trace",
        f"first {len(turns)} requests of AzureLLMInferenceTrace_conv, arrivals {speedup:g}x "
        f"faster ({span:.0f} s), context capped at {max_context}, output at {max_tokens_cap}",
        turns,
    )
