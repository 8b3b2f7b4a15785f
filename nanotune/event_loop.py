"""The asyncio event loop that the HTTP server and the bench's HTTP client run on: uvloop's where it is
installed (its sockets, timers and callbacks are C, which matters when one thread writes or reads a chunk per
stream per engine step for hundreds of streams), else the standard library's."""

from __future__ import annotations

import asyncio


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # not on this platform (Windows) or not installed: the standard loop works the same
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
