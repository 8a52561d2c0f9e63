"""Per-process singletons that a forked child makes anew instead of inheriting.

A prefork child inherits its parent's memory: a connection pool whose sockets belong to the
parent, a heartbeat whose thread did not survive the fork, and locks that another thread of the
parent may have held at the moment of fork() (the child would wait on them for ever). Every
`PerProcess` value is made once per process, and again when its key changes; one after-fork hook
gives every instance a fresh lock. This is the only place medic registers an at-fork hook.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

K = TypeVar("K")
T = TypeVar("T")


class PerProcess(Generic[K, T]):
    """A value made by `make(key)` on first use in each process (or when `key` changes).

    `close` is called on a value this process made and replaces; a value inherited from a parent
    is dropped without closing (its sockets belong to the parent).
    """

    def __init__(self, make: Callable[[K], T], *, close: Callable[[T], None] | None = None) -> None:
        self._make = make
        self._close = close
        self._lock = threading.Lock()
        self._value: T | None = None
        self._key: K | None = None
        self._pid: int | None = None
        _instances.add(self)

    def get(self, key: K) -> T:
        with self._lock:
            pid = os.getpid()
            if self._value is None or self._pid != pid or self._key != key:
                self._close_own()
                self._value = self._make(key)
                self._key = key
                self._pid = pid
            return self._value

    def peek(self) -> T | None:
        """This process's value if it made one, without making it."""
        with self._lock:
            return self._value if self._pid == os.getpid() else None

    def clear(self) -> None:
        """Close (if this process made it) and forget the value; the next `get` makes a new one."""
        with self._lock:
            self._close_own()
            self._value = None

    def _close_own(self) -> None:
        if self._value is not None and self._pid == os.getpid() and self._close is not None:
            self._close(self._value)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


_instances: weakref.WeakSet[PerProcess[Any, Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for instance in list(_instances):
        instance._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
