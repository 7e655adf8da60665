"""How tasks report progress without printing: a task calls `steps = progress(task, total)` once it knows its
amount of work, then `steps(n)` as it does n more of it. `evaluate` turns the caller's callback
`on_progress(task, done, total)` (the command line draws a bar from it) into that factory."""

from __future__ import annotations

from collections.abc import Callable

Advance = Callable[[int], None]
Progress = Callable[[str, int], Advance]


def progress_factory(on_progress: Callable[[str, int, int], None] | None) -> Progress:
    def start(task: str, total: int) -> Advance:
        done = 0
        if on_progress is not None:
            on_progress(task, 0, total)

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            if on_progress is not None:
                on_progress(task, done, total)

        return advance

    return start
