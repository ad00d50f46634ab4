"""Progress events and running the core's progress generators to their end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

E = TypeVar("E")
F = TypeVar("F")
R = TypeVar("R")


@dataclass
class Progress:
    """How far a long task is: ``done`` steps of ``total`` (0 = unknown), with a message.

    The one progress event of the core: prediction (tiles), metrics (images),
    generation and export (images; ``path`` names a file just written).
    Training yields its own richer events, which carry ``done``/``total`` too.
    """

    done: int
    total: int
    message: str = ""
    path: str | None = None


def drive(gen: Generator[E, None, R], on_event: Callable[[E], None] | None = None) -> R:
    """Run ``gen`` to its end, passing each yielded event to ``on_event``; return its value.

    The core's long tasks (prediction, training, metrics, generation) are
    generators that yield progress and return a result; GUI workers iterate them
    (cancel = stop iterating), everything else drives them with this. When
    ``on_event`` raises (Ctrl-C in a progress bar), ``gen`` gets the same exception
    at its ``yield``, so its own clean-up runs now rather than when it is collected.
    """
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            try:
                on_event(event)
            except BaseException as err:
                with contextlib.suppress(type(err), StopIteration):
                    gen.throw(err)
                gen.close()  # in case it went on past the stop
                raise


def map_events(gen: Generator[E, None, R], convert: Callable[[E], F]) -> Generator[F, None, R]:
    """Re-yield ``convert(event)`` for each of ``gen``'s events; return ``gen``'s value
    (``result = yield from map_events(...)``). Closing this generator closes ``gen``
    (a cancel reaches the task's own clean-up, as ``yield from`` would pass it on)."""
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            yield convert(event)
    finally:
        gen.close()


def relay(
    gen: Generator[Progress, None, R], offset: int, total: int, message: str = ""
) -> Generator[Progress, None, R]:
    """Re-yield ``gen``'s progress as part of a larger task; return ``gen``'s value.

    Each event becomes ``offset + done`` of ``total`` with ``message``: e.g. the
    tiles of one slice counted among the tiles of a whole stack
    (``labels = yield from relay(...)``).
    """
    return (yield from map_events(gen, lambda e: Progress(offset + e.done, total, message, e.path)))
