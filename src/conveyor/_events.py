"""EventBus: named events to callbacks and to async subscribers.

A ``Queue``'s bus carries its store's events (other processes' too, where the store can); a
``Worker``'s bus carries that worker's own events. Every event is a
:class:`~conveyor.store.StoreEvent`; ``event.type`` is its name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .store import InvalidArgumentError, StoreEvent

__all__ = ["EventBus", "EventCallback"]

log = logging.getLogger("conveyor.events")

EventCallback = Callable[[StoreEvent], None]

ERROR = "error"


class EventBus:
    """Deliver events by name.

    ::

        queue.events.on("completed", lambda event: print(event.job_id))

        async with queue.events.subscribe("completed", "failed") as events:
            async for event in events:
                ...

    A callback runs synchronously where the event is emitted and must not block. A callback
    that raises does not stop anything: the exception is emitted as an ``error`` event (and
    logged if that raises too).

    :param on_first: called when the bus gets its first listener (to start a feed).
    :param on_last: called when it loses its last one.
    """

    def __init__(
        self,
        *,
        on_first: Callable[[], None] | None = None,
        on_last: Callable[[], None] | None = None,
    ) -> None:
        self._callbacks: dict[str, list[EventCallback]] = {}
        self._streams: list[tuple[frozenset[str], MemoryObjectSendStream[StoreEvent]]] = []
        self._on_first = on_first
        self._on_last = on_last

    def _listeners(self) -> int:
        return sum(map(len, self._callbacks.values())) + len(self._streams)

    def _added(self) -> None:
        if self._listeners() == 1 and self._on_first is not None:
            self._on_first()

    def _removed(self) -> None:
        if self._listeners() == 0 and self._on_last is not None:
            self._on_last()

    def listening(self, event: str) -> bool:
        """Whether anyone would receive an event of this name (so emitters can skip building
        events nobody reads)."""
        return bool(
            self._streams or self._callbacks.get(event) or self._callbacks.get("*")
            or (event != ERROR and self._callbacks.get(ERROR))
        )  # fmt: skip

    def on(self, event: str, callback: EventCallback) -> None:
        """Call ``callback(event)`` for every event named ``event`` (``"*"``: every event)."""
        if not isinstance(event, str) or not event:
            raise InvalidArgumentError("event", "expected an event name")
        if not callable(callback):
            raise InvalidArgumentError("callback", "must be callable")
        self._callbacks.setdefault(event, []).append(callback)
        self._added()

    def off(self, event: str, callback: EventCallback | None = None) -> None:
        """Remove one callback, or every callback of ``event``."""
        callbacks = self._callbacks.get(event)
        if not callbacks:
            return
        if callback is None:
            del self._callbacks[event]
        else:
            remaining = [c for c in callbacks if c != callback]
            if remaining:
                self._callbacks[event] = remaining
            else:
                del self._callbacks[event]
        self._removed()

    @asynccontextmanager
    async def subscribe(self, *events: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        """Receive events (all of them, or those named) as an async iterator while in the block.

        Events are buffered without bound, so a slow reader never makes an emitter wait.
        """
        send, receive = anyio.create_memory_object_stream[StoreEvent](math.inf)
        entry = (frozenset(events), send)
        self._streams.append(entry)
        self._added()
        try:
            async with receive:
                yield receive
        finally:
            self._streams.remove(entry)
            send.close()
            self._removed()

    def emit(self, event: StoreEvent) -> None:
        """Deliver an event now."""
        for callback in [*self._callbacks.get(event.type, ()), *self._callbacks.get("*", ())]:
            try:
                callback(event)
            except Exception as exc:
                self._report(event, exc)
        for names, stream in self._streams:
            if not names or event.type in names:
                stream.send_nowait(event)

    def _report(self, event: StoreEvent, exc: Exception) -> None:
        if event.type == ERROR:
            log.error("an 'error' event callback raised", exc_info=exc)
            return
        self.emit(
            StoreEvent(
                ERROR,
                event.queue_name,
                event.job_id,
                {"message": f"{type(exc).__name__}: {exc}", "event": event.type},
                event.timestamp,
            )
        )
