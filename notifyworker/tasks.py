"""Task handlers: a registry from task name to an async handler and its payload model.

    from pydantic import BaseModel
    from notifyworker.tasks import task

    class Resize(BaseModel):
        image_id: int

    @task("resize")
    async def resize(payload: Resize) -> dict[str, int]:
        ...

`notifyworker run --tasks myapp.tasks` imports that module, which registers
its handlers in the default registry as a side effect of the decorator.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from notifyworker.cron import CatchUp, Schedule
from notifyworker.errors import ConfigError, InvalidPayload, UnknownTask

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[M], Awaitable[Any]]


@dataclass(frozen=True)
class Task:
    name: str
    model: type[BaseModel]
    handler: Callable[[Any], Awaitable[Any]]

    def parse(self, payload: str) -> BaseModel:
        """The payload's JSON text, validated by the task's model in one pass."""
        try:
            return self.model.model_validate_json(payload)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
                for e in exc.errors()
            )
            raise InvalidPayload(f"invalid payload for task {self.name!r}: {problems}") from None


class Registry:
    """Task name → handler. A worker runs the tasks of one registry."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._schedules: dict[str, Schedule] = {}

    def task(
        self,
        name: str,
        *,
        schedule: str | None = None,
        tz: str = "UTC",
        catch_up: CatchUp = "one",
    ) -> Callable[[Handler[M]], Handler[M]]:
        """Register an async handler whose one parameter is annotated with its payload model.

        With `schedule`, a cron expression read in `tz`, the task also runs on
        that schedule (named after the task, with an empty payload).
        """
        # Checked before anything is registered: a bad expression registers nothing.
        declared = None if schedule is None else Schedule(name, schedule, name, tz, {}, catch_up)

        def register(handler: Handler[M]) -> Handler[M]:
            self.add(name, handler)
            if declared is not None:
                self._declare(declared)
            return handler

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

    def add(self, name: str, handler: Handler[M]) -> None:
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
        self._tasks[name] = Task(name, model, handler)

    def get(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise UnknownTask(f"unknown task {name!r} (known tasks: {known})") from None


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
