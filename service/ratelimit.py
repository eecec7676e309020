"""Per-key rate limits: a token bucket of requests per second and one of generated tokens per second.

    limits = RateLimits(requests_per_s=20, tokens_per_s=2000)   # the server's defaults (None: no limit)
    limits.admit(principal)            # TooManyRequestsError when the key is over either limit
    limits.charge_tokens(principal, 350)   # after an answer: its prompt and completion tokens

A key's own limits (`pqrag keys create --rps/--tps`) override the defaults. The request bucket holds one second of
requests (at least one); the token bucket may go into debt: a long answer is charged once it is known, and the key's
next requests wait until the debt is paid back, as OpenAI's per-minute token limits do. Buckets are per key name
(the anonymous caller of a server without keys shares one).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from common.errors import TooManyRequestsError
from service.auth import Principal


@dataclass
class TokenBucket:
    rate: float  # refill per second
    capacity: float
    level: float
    stamp: float  # monotonic time of the last refill

    @classmethod
    def full(cls, rate: float) -> TokenBucket:
        capacity = max(1.0, rate)
        return cls(rate, capacity, capacity, time.monotonic())

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self, need: float) -> float:
        """Seconds until `need` is available (0: now)."""
        return max(0.0, (need - self.level) / self.rate)


class RateLimits:
    def __init__(self, requests_per_s: float | None = None, tokens_per_s: float | None = None):
        self.requests_per_s = requests_per_s
        self.tokens_per_s = tokens_per_s
        self._lock = threading.Lock()
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def _bucket(self, table: dict[str, TokenBucket], name: str, rate: float | None) -> TokenBucket | None:
        if rate is None:
            return None
        b = table.get(name)
        if b is None or b.rate != rate:
            b = table[name] = TokenBucket.full(rate)
        b.refill()
        return b

    def admit(self, principal: Principal) -> None:
        """Take one request from the key's bucket; TooManyRequestsError (retry after the time it names) when it is
        empty or the key's token bucket is in debt."""
        with self._lock:
            tokens = self._bucket(self._tokens, principal.name, principal.tokens_per_s or self.tokens_per_s)
            if tokens is not None and tokens.level < 0:
                raise TooManyRequestsError(
                    f"key {principal.name!r} is over its limit of {tokens.rate:g} generated tokens per second; "
                    f"retry in {tokens.wait_s(0):.1f} s"
                )
            requests = self._bucket(self._requests, principal.name, principal.requests_per_s or self.requests_per_s)
            if requests is not None:
                if requests.level < 1:
                    raise TooManyRequestsError(
                        f"key {principal.name!r} is over its limit of {requests.rate:g} requests per second; "
                        f"retry in {requests.wait_s(1):.2f} s"
                    )
                requests.level -= 1

    def charge_tokens(self, principal: Principal, n: int) -> None:
        """Charge the tokens an answer used (may leave the bucket in debt)."""
        with self._lock:
            tokens = self._bucket(self._tokens, principal.name, principal.tokens_per_s or self.tokens_per_s)
            if tokens is not None:
                tokens.level -= n
