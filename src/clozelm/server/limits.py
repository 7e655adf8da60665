"""The server's limits: one typed, self-checking set of numbers (what `clozelm serve`'s options set)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .fields import check_number

# field: (lowest, highest, integer). Every limit is finite: an infinite time limit overflows the waits it
# sets, and NaN would pass every comparison made later. `clozelm serve` reads its options with these ranges.
LIMIT_RANGES = {
    "max_body": (1024, 64 << 20, True),
    "max_text": (1, 1_000_000, True),
    "max_top": (1, 1000, True),
    "max_new_tokens": (1, 100_000, True),
    "timeout": (0.01, 86_400.0, False),
    "receive_timeout": (0.01, 3600.0, False),
    "queue_size": (1, 100_000, True),
    "workers": (1, 256, True),
    "heads_cache": (0, 1000, True),
}


@dataclass(frozen=True)
class Limits:
    max_body: int = 64 * 1024  # bytes of one request body
    max_text: int = 4000  # characters of one text
    max_top: int = 20  # answers per model
    max_new_tokens: int = 200  # tokens one generation may ask for
    timeout: float = 60.0  # seconds a request may take for its model work, time in the queue included
    receive_timeout: float = 10.0  # seconds a client has to send one whole request, from its first byte
    queue_size: int = 8  # model jobs waiting beyond those running
    workers: int = 1  # threads doing model work (torch already spreads one call over the cores)
    heads_cache: int = 4  # heads pages kept, so the page's check-then-show costs one computation

    def __post_init__(self) -> None:
        for field in fields(self):
            low, high, integer = LIMIT_RANGES[field.name]
            check_number(f"Limits.{field.name}", getattr(self, field.name), low, high, integer)
