"""Metrics read from the worker's parts when scraped, never kept twice.

A listener's connects, the recorder's backlog, the free consumer slots: the
parts keep these anyway, so a scrape reads them where they live instead of
every part pushing copies into metrics on the hot path. The parts are seen
through the few attributes read here, so this module depends on none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import anyio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class Listening(Protocol):
    @property
    def connects(self) -> int: ...
    @property
    def listening(self) -> bool: ...


class Recording(Protocol):
    @property
    def backlog(self) -> int: ...
    def stalled_for(self, now: float) -> float: ...


class Sweeping(Protocol):
    def last_sweep_age(self, now: float) -> float: ...


class Slots(Protocol):
    @property
    def free(self) -> int: ...


class Pacing(Protocol):
    @property
    def rate(self) -> float: ...


class Claiming(Protocol):
    @property
    def claims(self) -> int: ...
    @property
    def empty_claims(self) -> int: ...
    @property
    def passed_on(self) -> int: ...


class Readings(Collector):
    """Metric families whose values are read from callbacks when scraped."""

    def __init__(self) -> None:
        self._readings: list[
            tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str, Callable[[], float]]
        ] = []

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._readings.append((GaugeMetricFamily, name, documentation, read))

    def counter(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._readings.append((CounterMetricFamily, name, documentation, read))

    def collect(self) -> Iterator[Metric]:
        for kind, name, documentation, read in self._readings:
            yield kind(name, documentation, value=read())

    def watch(
        self,
        *,
        listener: Listening,
        recorder: Recording,
        sweeper: Sweeping,
        slots: Slots,
        limiter: Pacing,
        concurrency: int,
    ) -> None:
        """Read each part's own state at scrape time."""
        self.counter(
            "notifyworker_listener_reconnects",
            "Times the listener connected again after losing its connection.",
            lambda: max(listener.connects - 1, 0),
        )
        self.gauge(
            "notifyworker_listener_connected",
            "1 while the listener is connected and LISTENing.",
            lambda: float(listener.listening),
        )
        self.gauge(
            "notifyworker_consumers_busy",
            "Consumer slots holding a claimed job (waiting for a start slot or running).",
            lambda: concurrency - slots.free,
        )
        self.gauge(
            "notifyworker_recorder_backlog",
            "Start and finish marks not yet written to the table.",
            lambda: recorder.backlog,
        )
        self.gauge(
            "notifyworker_last_sweep_age_seconds",
            "Seconds since any sweeper of the fleet finished a round, as this worker last saw.",
            lambda: sweeper.last_sweep_age(anyio.current_time()),
        )
        self.gauge(
            "notifyworker_recorder_stalled_seconds",
            "Seconds the marks being written have waited for the table (0 when none wait).",
            lambda: recorder.stalled_for(anyio.current_time()),
        )
        self.gauge(
            "notifyworker_rate",
            "Job starts per second this worker allows; 0 = unlimited.",
            lambda: limiter.rate,
        )

    def claims(self, demand: Claiming) -> None:
        """The claims this worker ran: how many wake-ups a job costs the database."""
        self.counter("notifyworker_claims", "Claims this worker ran.", lambda: demand.claims)
        self.counter(
            "notifyworker_claims_empty",
            "Claims that found no job (woken for a job another worker took, or a poll).",
            lambda: demand.empty_claims,
        )
        self.counter(
            "notifyworker_wakes_passed_on",
            "New jobs whose token chose this worker while it was full: the whole fleet was woken.",
            lambda: demand.passed_on,
        )
