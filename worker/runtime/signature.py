"""A signature: one job type with its args and options, not submitted yet: the step of a
workflow as the library's canvas (`worker.accept.canvas`: chain, group, chord) takes it.

`@job` functions get `.s(**args)` and `.si(**args)` (worker/runtime/registry.py), as Celery's
tasks do. `.s` is the mutable signature: its step is given the results of the steps it waits
for when its function declares a `results` parameter; `.si` is immutable: never.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

OPTIONS = frozenset({"queue", "priority", "timeout", "max_attempts"})


@dataclasses.dataclass(frozen=True)
class Signature:
    """`type` with `args`; `options` as `POST /jobs` takes them; `name`: its step's name (None:
    made from the type when the workflow is built)."""

    type: str
    args: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    name: str | None = None
    immutable: bool = False

    def set(self, *, name: str | None = None, **options: Any) -> Signature:
        """A copy with a step name and/or job options (queue, priority, timeout, max_attempts).

        Raises:
            TypeError: an option that is not one of OPTIONS.
        """
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise TypeError(f"unknown signature options {unknown}; known: {sorted(OPTIONS)}")
        return dataclasses.replace(
            self, name=name if name is not None else self.name, options=MappingProxyType({**self.options, **options})
        )


def sig(target: Any, /, **args: Any) -> Signature:
    """A mutable signature of `target`: a job type's name or an `@job` function."""
    return Signature(_type_name(target), MappingProxyType(dict(args)))


def si(target: Any, /, **args: Any) -> Signature:
    """An immutable signature: its step never gets the results of the steps it waits for."""
    return Signature(_type_name(target), MappingProxyType(dict(args)), immutable=True)


def _type_name(target: Any) -> str:
    spec = getattr(target, "job_spec", None)
    if spec is not None:
        return str(spec.name)
    if isinstance(target, str):
        return target
    raise TypeError(f"a signature takes a job type's name or an @job function, not {target!r}")
