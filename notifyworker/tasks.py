"""Task handlers: a registry from task name to an async handler and its payload model.

    from pydantic import BaseModel
    from notifyworker.tasks import task

    class Resize(BaseModel):
        image_id: int

    @task("resize")
    async def resize(payload: Resize) -> dict[str, int]:
        ...

    resize.defer(conn, image_id=7)  # or resize.defer(conn, Resize(image_id=7))

`notifyworker run --tasks myapp.tasks` imports that module, which registers
its handlers in the default registry as a side effect of the decorator. The
decorator returns the `Task`, which still runs the handler when called and
defers jobs of itself, checked by its model before anything is sent.

A task may run on a cron schedule, declared beside it (the schedule takes the
task's name, and an empty payload):

    @task("report", schedule="0 * * * *", tz="Europe/Paris")
    async def report(payload: Nothing) -> None: ...

or with `schedule(name, cron, task=..., payload=...)` for several schedules of
one task. A worker writes the declared schedules to notifyworker.schedules
when it starts (`notifyworker.scheduler`); a malformed expression or zone, or
a payload the task's model refuses, is a ConfigError at declaration.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast, get_type_hints

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from notifyworker.cron import CatchUp, Schedule
from notifyworker.db import AsyncConnection, Connection, Job, enqueue_one, enqueue_one_async
from notifyworker.errors import ConfigError, InvalidPayload, UnknownTask
from notifyworker.models import JobId

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")
Handler = Callable[[M], Awaitable[R]]

# What defer() and job() take besides the payload: the row's own columns.
OPTIONS = (
    "object_id",
    "timeout",
    "max_attempts",
    "run_at",
    "unique_key",
    "queue",
    "priority",
    "limit_key",
)


@dataclass(frozen=True)
class Task(Generic[M, R]):
    """A registered handler with its payload's model; it defers jobs of itself."""

    name: str
    model: type[M]
    handler: Handler[M, R]

    def __call__(self, payload: M) -> Awaitable[R]:
        """Run the handler, as the undecorated function would."""
        return self.handler(payload)

    def parse(self, payload: str) -> M:
        """The payload's JSON text, validated by the task's model in one pass."""
        try:
            return self.model.model_validate_json(payload)
        except ValidationError as exc:
            raise self._refused(exc) from None

    def job(
        self, payload: M | Mapping[str, Any] | None = None, /, **options_and_fields: Any
    ) -> Job:
        """A job of this task to enqueue (with enqueue_many), its payload checked here.

        The payload is a model instance, a mapping, or keyword fields; the
        keywords in OPTIONS are the job's (object_id, timeout, max_attempts,
        run_at, unique_key, queue, priority, limit_key). It is stored as the
        model writes it, and refused unless the worker's `parse` reads it back:
        a bad payload fails at the call site, naming the field, not as a
        failed job later.
        """
        options = {k: options_and_fields.pop(k) for k in OPTIONS if k in options_and_fields}
        text = self._payload_json(payload, options_and_fields, options)
        return Job(self.name, text, **options)

    def defer(
        self, conn: Connection, payload: M | Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> JobId:
        """Enqueue a job of this task in `conn`'s transaction: its id (see `job`)."""
        return enqueue_one(conn, self.job(payload, **kwargs))

    async def defer_async(
        self, aconn: AsyncConnection, payload: M | Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> JobId:
        """`defer` on an asyncio connection."""
        return await enqueue_one_async(aconn, self.job(payload, **kwargs))

    def _payload_json(
        self, payload: object, fields: dict[str, Any], options: dict[str, Any]
    ) -> str:
        if payload is not None and fields:
            raise InvalidPayload(
                f"task {self.name!r}: give the payload as a model, a mapping or fields, not two"
            )
        named = set(self.model.model_fields)
        named |= {f.alias for f in self.model.model_fields.values() if f.alias}
        if payload is None and (clash := sorted(named & options.keys())):
            raise InvalidPayload(
                f"task {self.name!r}: {', '.join(clash)} is both a field of "
                f"{self.model.__name__} and an option of the job; pass the payload as a "
                f"{self.model.__name__} or a mapping"
            )
        if isinstance(payload, BaseModel) and not isinstance(payload, self.model):
            raise InvalidPayload(
                f"task {self.name!r} takes a {self.model.__name__}, not a {type(payload).__name__}"
            )
        try:
            model = self.model.model_validate(fields if payload is None else payload)
        except ValidationError as exc:
            raise self._refused(exc) from None
        text = model.model_dump_json(by_alias=True, round_trip=True)
        self.parse(text)  # what the worker will read: a model must read back its own JSON
        return text

    def _refused(self, exc: ValidationError) -> InvalidPayload:
        """Each field the model refused, and why, on one line."""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        return InvalidPayload(f"invalid payload for task {self.name!r}: {problems}")


class Registry:
    """Task name → handler. A worker runs the tasks of one registry."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._schedules: dict[str, Schedule] = {}

    def task(
        self,
        name: str,
        *,
        schedule: str | None = None,
        tz: str = "UTC",
        catch_up: CatchUp = "one",
    ) -> Callable[[Handler[M, R]], Task[M, R]]:
        """Register an async handler whose one parameter is annotated with its payload model.

        With `schedule`, a cron expression read in `tz`, the task also runs on
        that schedule (named after the task, with an empty payload).
        """
        # Checked before anything is registered: a bad expression registers nothing.
        declared = None if schedule is None else Schedule(name, schedule, name, tz, {}, catch_up)

        def register(handler: Handler[M, R]) -> Task[M, R]:
            registered = self.add(name, handler)
            if declared is not None:
                self._declare(declared)
            return registered

        return register

    def schedule(
        self,
        name: str,
        cron: str,
        *,
        task: str,
        tz: str = "UTC",
        payload: dict[str, Any] | None = None,
        catch_up: CatchUp = "one",
    ) -> Schedule:
        """Declare a schedule: `task` runs with `payload` at every tick of `cron`, read in `tz`."""
        declared = Schedule(name, cron, task, tz, payload or {}, catch_up)
        self._declare(declared)
        return declared

    def _declare(self, schedule: Schedule) -> None:
        if schedule.name in self._schedules:
            raise ConfigError(f"schedule {schedule.name!r} is declared twice")
        if schedule.task in self._tasks:
            self._check_payload(schedule)
        self._schedules[schedule.name] = schedule

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        return tuple(self._schedules.values())

    def check_schedules(self) -> None:
        """Every declared schedule names a task of this registry, with a payload it accepts."""
        for schedule in self._schedules.values():
            if schedule.task not in self._tasks:
                raise ConfigError(
                    f"schedule {schedule.name!r} names task {schedule.task!r}, "
                    "which no tasks module registers"
                )
            self._check_payload(schedule)

    def _check_payload(self, schedule: Schedule) -> None:
        try:
            self._tasks[schedule.task].parse(json.dumps(schedule.payload))
        except InvalidPayload as exc:
            raise ConfigError(f"schedule {schedule.name!r}: {exc}") from None

    def add(self, name: str, handler: Handler[M, R]) -> Task[M, R]:
        if name in self._tasks:
            raise ConfigError(f"task {name!r} is registered twice")
        if not inspect.iscoroutinefunction(handler):
            raise ConfigError(f"task {name!r}: the handler must be an async function")
        params = list(inspect.signature(handler).parameters.values())
        model: Any = params[0].annotation if len(params) == 1 else None
        if isinstance(model, str):  # postponed annotations: resolve them
            try:
                model = get_type_hints(handler).get(params[0].name)
            except NameError as exc:
                raise ConfigError(
                    f"task {name!r}: cannot resolve the payload annotation ({exc}); "
                    "define the model at module level"
                ) from None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(
                f"task {name!r}: the handler takes exactly one parameter, "
                "annotated with a pydantic model"
            )
        # The handler's own annotation: its M by construction.
        added = Task(name, cast("type[M]", model), handler)
        self._tasks[name] = added
        return added

    def get(self, name: str) -> Task[Any, Any]:
        try:
            return self._tasks[name]
        except KeyError:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise UnknownTask(f"unknown task {name!r} (known tasks: {known})") from None

    def defer(self, conn: Connection, name: str, payload: Any = None, /, **kwargs: Any) -> JobId:
        """Enqueue a job of the task registered as `name`; UnknownTask before anything is sent."""
        return self.get(name).defer(conn, payload, **kwargs)

    async def defer_async(
        self, aconn: AsyncConnection, name: str, payload: Any = None, /, **kwargs: Any
    ) -> JobId:
        """`defer` on an asyncio connection."""
        return await self.get(name).defer_async(aconn, payload, **kwargs)


def import_tasks(modules: tuple[str, ...]) -> None:
    """Import user task modules so their decorators register handlers."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure of user code at import is a config error
            raise ConfigError(
                f"cannot import tasks module {module!r}: {type(exc).__name__}: {exc}"
            ) from None


registry = Registry()
task = registry.task
defer = registry.defer
defer_async = registry.defer_async
schedule = registry.schedule


class SleepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)


@task("sleep")
async def sleep(payload: SleepPayload) -> dict[str, float]:
    """Sleep for `seconds`; without them, forever (the demo's stuck job)."""
    if payload.seconds is None:
        await anyio.sleep(math.inf)
    else:
        await anyio.sleep(payload.seconds)
    return {"slept": payload.seconds or 0.0}
