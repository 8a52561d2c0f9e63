"""Job types: `@job` turns a function into a registered job and a Celery task.

Arguments are a JSON object of keyword arguments, validated against the function's signature
(pydantic) before anything is written, and validated again when the job runs.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from worker.errors import DuplicateJobNameError, InvalidArgsError, UnknownJobTypeError
from worker.runtime import storable
from worker.runtime.flow_rules import FlowRules
from worker.runtime.signature import si, sig
from worker.runtime.task import register_task
from worker.settings import Settings, get_settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class JobSpec:
    """A registered job type; None means "the settings' default"."""

    name: str
    func: Callable[..., Any]
    args_model: type[BaseModel]
    queue: str | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None
    backoff_s: float | None = None
    # a code-declared schedule of this job (worker/control/declared.py reads it): seconds, a cron
    # string, a celery `crontab`, or a dict of the schedule's fields
    schedule: Any = None
    # keyed concurrency and a rate limit: its jobs are started by the dispatcher (docs/flow.md)
    flow: FlowRules | None = None

    def validate(self, args: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check `args` against the signature; return them as JSON-ready data.

        Raises:
            InvalidArgsError: missing, extra or ill-typed arguments, or values the ledger cannot
                store (NaN, Infinity, NUL or a lone surrogate in a string or key).
        """
        raw = dict(args or {})
        # Checked before pydantic too: its JSON dump quietly turns an Infinity inside an `Any`
        # field into null, and a job must not run with other args than were submitted.
        self._refuse_unstorable(storable.problem(raw))
        try:
            model = self.args_model.model_validate(raw)
        except ValidationError as exc:
            problems = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()]
            raise InvalidArgsError(f"args do not fit {self.name}", problems=problems) from None
        dumped: dict[str, Any] = model.model_dump(mode="json")
        self._refuse_unstorable(storable.check(dumped))
        return dumped

    def _refuse_unstorable(self, found: tuple[str, str] | None) -> None:
        if found is not None:
            loc, msg = found
            raise InvalidArgsError(
                f"args of {self.name} hold a value the ledger cannot store", problems=[{"loc": loc, "msg": msg}]
            )

    def load(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """Stored JSON args -> keyword arguments with their declared Python types."""
        model = self.args_model.model_validate(dict(stored))
        return {name: getattr(model, name) for name in type(model).model_fields}

    def queue_or(self, settings: Settings) -> str:
        return self.queue or settings.default_queue


_REGISTRY: dict[str, JobSpec] = {}


def _args_model(name: str, func: Callable[..., Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    extra = "forbid"
    for param in inspect.signature(func).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        annotation = Any if param.annotation is inspect.Parameter.empty else param.annotation
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    config = ConfigDict(extra=extra, arbitrary_types_allowed=True)  # type: ignore[typeddict-item]
    model_name = "".join(part.title() for part in name.replace("-", ".").split(".")) + "Args"
    return create_model(model_name, __config__=config, **fields)


def _origin(func: Callable[..., Any]) -> tuple[str, str]:
    """Where a function was defined: re-importing a module re-registers, it is no duplicate."""
    return func.__module__, func.__qualname__


def job(
    name: str | None = None,
    *,
    queue: str | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    backoff: float | None = None,
    schedule: Any = None,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
    rate_limit: str | None = None,
    rate_limit_key: str | None = None,
) -> Callable[[F], F]:
    """Register `func` as job type `name` (default: module.function) with its defaults, and with
    `schedule` a schedule of it in the ledger (docs/schedules.md).

    Flow control (docs/flow.md): `concurrency_key` (an argument's name, or a template such as
    `"{account}/{region}"`) with `concurrency_limit` (default 1) lets at most that many jobs with
    one key run at once, across every worker; `rate_limit` (`"10/s"`, `"100/m"`, `"5/h"`), per
    `rate_limit_key` value when given, spaces the starts of the type across every worker. Jobs
    over a limit wait in the ledger (`held`), holding no worker slot.

    Raises:
        ValueError: an option that cannot work (a key naming no argument, a bad rate).
    """

    def decorate(func: F) -> F:
        job_name = name or f"{func.__module__.rsplit('.', 1)[-1]}.{func.__name__}"
        existing = _REGISTRY.get(job_name)
        if existing is not None and _origin(existing.func) != _origin(func):
            raise DuplicateJobNameError(f"job {job_name!r} is registered twice")
        parameters = [
            p.name for p in inspect.signature(func).parameters.values()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]  # fmt: skip
        flow = FlowRules.declare(
            parameters,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
            rate_limit=rate_limit,
            rate_limit_key=rate_limit_key,
        )
        spec = JobSpec(
            name=job_name,
            func=func,
            args_model=_args_model(job_name, func),
            queue=queue,
            timeout_s=timeout,
            max_attempts=max_attempts,
            backoff_s=backoff,
            schedule=schedule,
            flow=flow,
        )
        _REGISTRY[job_name] = spec
        register_task(spec)
        func.job_spec = spec  # type: ignore[attr-defined]
        func.s = functools.partial(sig, func)  # type: ignore[attr-defined]  # Celery's my_task.s(...)
        func.si = functools.partial(si, func)  # type: ignore[attr-defined]
        return func

    return decorate


def get_spec(name: str) -> JobSpec:
    """The job type `name`; the configured job modules are imported on a first miss, so a
    process that only enqueues need not import them itself.

    Raises:
        UnknownJobTypeError: no job of that name is registered.
    """
    if name not in _REGISTRY:
        load_job_modules(get_settings().job_modules)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownJobTypeError(f"unknown job type {name!r}", type=name) from None


def all_specs() -> dict[str, JobSpec]:
    return dict(_REGISTRY)


def load_job_modules(modules: Iterable[str]) -> None:
    """Import application job modules so their `@job` functions register."""
    for module in modules:
        importlib.import_module(module)
