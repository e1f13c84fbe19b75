# cython: language_level=3
"""Per-socket batch queues for rooms: messages to one socket leave together as
``{"type": "batch", "messages": [...]}`` (one frame, serialised with orjson) once
``max_messages`` are waiting or ``max_delay`` seconds after the first one, whichever comes first.

One timer serves every queue of a :class:`Batcher`: queues live in a dict in the order their
first message arrived, which is also the order of their deadlines.
"""

cimport cython
import orjson

cdef object _dumps = orjson.dumps


@cython.final
@cython.freelist(64)
cdef class _Queue:
    cdef double deadline
    cdef list messages


@cython.final
cdef class Batcher:
    """Batch queues keyed by socket.

    Args:
        send: ``send(key, frame: bytes)`` called with each serialised batch.
        max_messages: a batch leaves when this many messages wait (default 10).
        max_delay: ... or this many seconds after its first message (default 0.1).
        loop: the event loop whose clock and timers are used.
    """
    cdef object _send
    cdef Py_ssize_t max_messages
    cdef double max_delay
    cdef object _loop
    cdef dict _queues
    cdef object _timer
    cdef double _timer_at
    cdef readonly Py_ssize_t batches_sent

    def __init__(self, send, Py_ssize_t max_messages=10, double max_delay=0.1, loop=None):
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        if max_delay <= 0:
            raise ValueError("max_delay must be > 0")
        self._send = send
        self.max_messages = max_messages
        self.max_delay = max_delay
        if loop is None:
            import asyncio
            loop = asyncio.get_running_loop()
        self._loop = loop
        self._queues = {}
        self._timer = None

    def __len__(self):
        """How many keys have messages waiting."""
        return len(self._queues)

    def pending(self, key):
        """How many messages wait for ``key``."""
        cdef _Queue q = self._queues.get(key)
        return 0 if q is None else len(q.messages)

    def add(self, key, message):
        """Queue ``message`` (anything orjson encodes; an ``orjson.Fragment`` goes in as is)."""
        cdef _Queue q = self._queues.get(key)
        if q is None:
            q = _Queue.__new__(_Queue)
            q.deadline = self._loop.time() + self.max_delay
            q.messages = [message]
            self._queues[key] = q
            if self._timer is None:
                self._arm(q.deadline)
        else:
            q.messages.append(message)
        if len(q.messages) >= self.max_messages:
            del self._queues[key]
            self._emit(key, q)

    cdef void _arm(self, double at):
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    cdef int _emit(self, object key, _Queue q) except -1:
        self.batches_sent += 1
        self._send(key, _dumps({"type": "batch", "messages": q.messages}))
        return 0

    def _on_timer(self):
        cdef double now = self._loop.time()
        cdef _Queue q
        self._timer = None
        while self._queues:
            key = next(iter(self._queues))
            q = self._queues[key]
            if q.deadline > now:
                self._arm(q.deadline)
                return
            del self._queues[key]
            self._emit(key, q)

    def flush_key(self, key):
        """Send what waits for ``key`` now."""
        cdef _Queue q = self._queues.pop(key, None)
        if q is not None:
            self._emit(key, q)

    def flush_all(self):
        """Send every waiting batch now."""
        cdef _Queue q
        queues = self._queues
        self._queues = {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for key, q in queues.items():
            self._emit(key, q)

    def discard(self, key):
        """Drop what waits for ``key`` (its socket is gone)."""
        self._queues.pop(key, None)
