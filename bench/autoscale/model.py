"""A fast, deterministic queueing model of a deployment: a gateway queue in front of simulated
GPU instances that batch continuously like vLLM, with the simulator's calibrated timing.

Instance model (agent/sim/config.py defaults, checked by bench/sim/calibrate.py, whose table is
in bench/results/sim_calibration.json): Llama-3.1-8B-Instruct in BF16 on one H100 80GB under
vLLM. An engine step decodes one token for every running sequence in
8 ms x (1 + 0.006 x (batch - 1)) and, while prompts wait, prefills a chunk of up to
8192 - batch prompt tokens at 50 us per token plus 15 ms; a prompt's first token comes at the
end of the step that finishes its prefill. At most 256 sequences and 131072 KV tokens (a request
reserves prompt + output); the gateway sends an instance at most 64 requests per GPU and queues
the rest (FIFO, 1000 at most, 503 after 30 s). 5 ms of HTTP overhead is added to every TTFT: at
concurrency 1 the simulator's first token comes in 45 ms (`bench.sim.calibrate --concurrency 1
--rounds 10`, twice) where the step model gives 41 ms. (The 50 ms in sim_calibration.json was
measured while the simulator still held every token until the next, one decode step late.)
A decoding batch gains one token per step: continuously between steps, once at the end of a step
that carries prefill work (not bit by bit during it).

Between events (a step's end, a completion, an arrival) a decoding batch is constant, so decode
progress is one counter per instance: seconds of work, not steps, set the run time.
"""

from __future__ import annotations

import collections
import heapq
import math
from dataclasses import dataclass, field

from agent.sim.config import SimConfig


@dataclass(frozen=True)
class Request:
    arrival: float
    prompt: int
    output: int


@dataclass(frozen=True)
class InstanceModel:
    gpu_count: int = 1
    prefill_overhead_s: float = SimConfig.prefill_overhead_s
    prefill_per_token_s: float = SimConfig.prefill_per_token_s
    inter_token_latency_s: float = SimConfig.inter_token_latency_s
    decode_slowdown_per_seq: float = SimConfig.decode_slowdown_per_seq
    max_num_seqs: int = SimConfig.max_num_seqs
    max_num_batched_tokens: int = SimConfig.max_num_batched_tokens
    kv_cache_tokens: int = SimConfig.kv_cache_tokens
    http_overhead_s: float = 0.005
    max_inflight_per_gpu: int = 64  # gateway's INVENTIV_GATEWAY_MAX_INFLIGHT_PER_GPU default
    queue_size: int = 1000
    queue_deadline_s: float = 30.0

    def decode_step_s(self, batch: int) -> float:
        return self.inter_token_latency_s * (1 + self.decode_slowdown_per_seq * (batch - 1))

    def work_s(self, req: Request) -> float:
        """Engine seconds a request takes at a typical batch (the oracle's measure of demand)."""
        typical_batch = self.max_inflight_per_gpu
        decode = self.decode_step_s(typical_batch) / typical_batch
        return self.prefill_overhead_s + self.prefill_per_token_s * req.prompt + decode * req.output

    def solo_ttft_s(self, req: Request) -> float:
        """Its TTFT on an idle instance: the least any number of instances can give it."""
        chunks = math.ceil(max(1, req.prompt) / self.max_num_batched_tokens)
        return (
            chunks * self.prefill_overhead_s
            + self.prefill_per_token_s * max(1, req.prompt)
            + self.http_overhead_s
        )

    @property
    def max_inflight(self) -> int:
        return self.max_inflight_per_gpu * self.gpu_count


@dataclass
class Flight:
    """One request's journey."""

    req: Request
    dispatched: float = math.nan  # left the gateway queue
    first_token: float = math.nan
    done: float = math.nan
    refused: bool = False
    prefill_left: int = 0


@dataclass
class Engine:
    """One simulated instance. Its clock `t` may lag the global one while nothing happens on it."""

    model: InstanceModel
    id: str
    ordered_at: float
    ready_at: float
    t: float = 0.0
    v: float = 0.0  # tokens decoded per running sequence so far
    busy_s: float = 0.0
    kv_used: int = 0
    inflight: int = 0  # dispatched here and not finished
    draining_at: float | None = None
    terminated_at: float | None = None
    waiting: collections.deque[Flight] = field(default_factory=collections.deque)
    prefill: collections.deque[Flight] = field(default_factory=collections.deque)
    decoding: list[tuple[float, int, Flight]] = field(default_factory=list)
    step_end: float | None = None
    step_chunk: list[tuple[Flight, bool]] = field(default_factory=list)  # (request, prefilled)
    _seq: int = 0

    def is_ready(self, now: float) -> bool:
        return now >= self.ready_at and self.draining_at is None and self.terminated_at is None

    def next_event(self) -> float:
        if self.step_end is not None:
            return self.step_end
        if self.decoding:
            return self.t + (self.decoding[0][0] - self.v) * self.model.decode_step_s(
                len(self.decoding)
            )
        return math.inf

    def advance(self, until: float, done: list[Flight]) -> None:
        """Run the engine up to `until`, appending finished requests to `done`."""
        while self.t < until or self.next_event() <= until:
            event = self.next_event()
            if event > until:
                if self.step_end is not None:
                    # Mid-step: its decode token comes at its end, not bit by bit before.
                    self.busy_s += until - self.t
                elif self.decoding:
                    self.v += (until - self.t) / self.model.decode_step_s(len(self.decoding))
                    self.busy_s += until - self.t
                self.t = max(self.t, until)
                return
            if self.decoding or self.step_end is not None:
                self.busy_s += event - self.t
            if self.step_end is not None:
                self._end_step(event, done)
            else:
                self.v = self.decoding[0][0]
                self.t = event
                self._finish_decoded(done)
            self._admit()
            self._start_step()

    def add(self, flight: Flight, now: float) -> None:
        """A request dispatched here at `now` (the engine was advanced to `now`)."""
        self.inflight += 1
        self.waiting.append(flight)
        self._admit()
        if self.step_end is None:
            self._start_step()

    def _admit(self) -> None:
        m = self.model
        while self.waiting:
            f = self.waiting[0]
            need = f.req.prompt + f.req.output
            running = len(self.prefill) + len(self.decoding) + len(self.step_chunk)
            fits = self.kv_used + need <= m.kv_cache_tokens or running == 0
            if running >= m.max_num_seqs or not fits:
                return
            self.waiting.popleft()
            self.kv_used += need
            f.prefill_left = max(1, f.req.prompt)
            self.prefill.append(f)

    def _start_step(self) -> None:
        if self.step_end is not None or not self.prefill:
            return
        m = self.model
        batch = len(self.decoding)
        budget = max(1, m.max_num_batched_tokens - batch)
        chunk: list[tuple[Flight, bool]] = []
        tokens = 0
        while self.prefill and budget > 0:
            f = self.prefill[0]
            take = min(budget, f.prefill_left)
            budget -= take
            tokens += take
            f.prefill_left -= take
            chunk.append((f, f.prefill_left == 0))
            if f.prefill_left == 0:
                self.prefill.popleft()
        seconds = m.prefill_overhead_s + m.prefill_per_token_s * tokens
        if batch:
            seconds += m.decode_step_s(batch)
        self.step_chunk = chunk
        self.step_end = self.t + seconds

    def _end_step(self, at: float, done: list[Flight]) -> None:
        self.t = at
        self.step_end = None
        if self.decoding:
            self.v += 1
        self._finish_decoded(done)
        for f, prefilled in self.step_chunk:
            if not prefilled:
                continue  # the rest of its prompt comes in the next step
            f.first_token = at + self.model.http_overhead_s
            if f.req.output <= 1:
                self._complete(f, at, done)
            else:
                self._seq += 1
                heapq.heappush(self.decoding, (self.v + f.req.output - 1, self._seq, f))
        self.step_chunk = []

    def _finish_decoded(self, done: list[Flight]) -> None:
        while self.decoding and self.decoding[0][0] <= self.v + 1e-9:
            _, _, f = heapq.heappop(self.decoding)
            self._complete(f, self.t, done)

    def _complete(self, f: Flight, at: float, done: list[Flight]) -> None:
        f.done = at
        self.inflight -= 1
        self.kv_used -= f.req.prompt + f.req.output
        done.append(f)

    def idle(self) -> bool:
        return self.inflight == 0
