"""Reading ahead: an iterable's items produced by a background thread while the caller works."""

from __future__ import annotations

import queue
import threading

_DONE = object()


def prefetched(iterable, ahead: int = 1):
    """Yields the items of `iterable`, which a background thread produces up to `ahead` items in
    advance (e.g. the next batch's audio decodes while the devices decode this one). An
    exception raised while producing is raised here, in order."""
    items: queue.Queue = queue.Queue(maxsize=ahead)

    def produce():
        try:
            for item in iterable:
                items.put((item, None))
        except Exception as error:  # surfaced to the consumer, not lost in the thread
            items.put((None, error))
            return
        items.put((_DONE, None))

    threading.Thread(target=produce, daemon=True).start()
    while True:
        item, error = items.get()
        if error is not None:
            raise error
        if item is _DONE:
            return
        yield item
