"""Retries after a timeout or a dead worker, at the default timing: nothing is stranded.

Issue 14, finding 1: the sweeper NOTIFYs a cancel for every overdue job, the
ones it sends back to `new` for a retry included; every worker not running the
job remembered the id as an early cancel, and whichever of them claimed the
retry dropped it without a mark: the job sat `queued` forever on a live, idle
worker. The drain scenarios of test_chaos.py never saw it: their jobs never
time out, and their timing is fast.

These scenarios run real `notifyworker run` processes at the README's default
timing (heartbeat 2 s, dead_worker_after 15 s, sweep 1 s, poll 1 s, rate 50,
concurrency 10), with jobs that time out with retries left, and state two
invariants beside the ledger's accounting:

- every job is final within a bound derived from the settings (each test
  spells the sum out), counted from the moment the faults stop;
- no job sits `queued` on a live worker that has a free consumer for longer
  than QUEUED_AT_MOST (sampled every 0.2 s throughout the scenario).

Each prints one line, like the drain scenarios, for docs/guarantees.md.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import psycopg
import pytest

from tests.chaos.harness import Fleet, audit, db_now, prepare, until_workers
from tests.helpers import eventually, scalar

# The README's defaults, spelled out: the scenarios must not inherit the
# drain scenarios' fast timing, under which finding 1 never showed.
POLL = 1.0
SWEEP = 1.0
HEARTBEAT = 2.0
DEAD_AFTER = 15.0
BACKOFF = 1.0
RATE = 50.0
CONCURRENCY = 10
DEFAULTS = {
    "NOTIFYWORKER_RATE": f"{RATE:g}",
    "NOTIFYWORKER_CONCURRENCY": str(CONCURRENCY),
    "NOTIFYWORKER_POLL_INTERVAL": f"{POLL:g}",
    "NOTIFYWORKER_SWEEP_INTERVAL": f"{SWEEP:g}",
    "NOTIFYWORKER_HEARTBEAT_INTERVAL": f"{HEARTBEAT:g}",
    "NOTIFYWORKER_DEAD_WORKER_AFTER": f"{DEAD_AFTER:g}",
    "NOTIFYWORKER_RETRY_BACKOFF": f"{BACKOFF:g}",
    "NOTIFYWORKER_RETRY_BACKOFF_MAX": "300",
    "NOTIFYWORKER_LISTENER_CHECK_INTERVAL": "5",
    "NOTIFYWORKER_SHUTDOWN_GRACE": "10",
}
# Starting a worker's full set of consumers at `rate`: the longest a claimed
# job waits for its start slot.
PACING = CONCURRENCY / RATE
# Room for two busy cores shared with other sessions.
SLACK = 2.0
# A job claimed by a live worker with a free consumer starts within its pacing
# (the claimer claims no more than the free slots); a poll more is generous.
QUEUED_AT_MOST = POLL + PACING + 1.0
# A handler that hangs: it writes its ledger row, then sleeps for an hour.
HANGS = 3600.0

FINAL = ("done", "failed", "cancelled")


def retry_delay_max(attempt: int, backoff: float = BACKOFF) -> float:
    """The longest backoff before the retry that follows `attempt` (jitter at its top)."""
    return backoff * 2.0 ** (attempt - 1)


@dataclass
class QueuedWatch:
    """Samples the `queued` jobs every 0.2 s; fails once one is stranded on a live worker.

    Stranded: queued longer than QUEUED_AT_MOST on a worker whose process is
    alive and which runs fewer than CONCURRENCY jobs (a consumer is free). A
    dead worker's queued jobs wait for the sweeper and are not its concern.
    """

    url: str
    alive: Callable[[], set[int]]
    longest: float = 0.0  # the longest wait seen on a live worker with a free consumer
    samples: int = 0
    stranded: list[str] = field(default_factory=list)

    async def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while True:
                self.sample(conn)
                if self.stranded:
                    raise AssertionError(
                        f"{len(self.stranded)} job(s) stranded `queued` on a live worker with a"
                        f" free consumer for over {QUEUED_AT_MOST:g}s: "
                        + "; ".join(self.stranded)
                        + f". All jobs by status: {by_status(conn)}"
                    )
                await anyio.sleep(0.2)

    def sample(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(
            """
            SELECT j.id, j.attempts, w.pid,
                   extract(epoch FROM clock_timestamp() - j.queued_at)::float8,
                   (SELECT count(*) FROM notifyworker.jobs AS r
                    WHERE r.worker_id = j.worker_id AND r.status = 'running')
            FROM notifyworker.jobs AS j
            JOIN notifyworker.workers AS w ON w.id = j.worker_id
            WHERE j.status = 'queued'
            """
        ).fetchall()
        alive = self.alive()
        self.samples += 1
        for job_id, attempts, pid, age, running in rows:
            if pid not in alive or running >= CONCURRENCY:
                continue
            self.longest = max(self.longest, age)
            if age > QUEUED_AT_MOST:
                self.stranded.append(
                    f"job {job_id} (attempts {attempts}) queued {age:.1f}s on pid {pid}"
                    f" running {running} of {CONCURRENCY}"
                )


def by_status(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) FROM notifyworker.jobs GROUP BY status ORDER BY status"
    ).fetchall()
    return dict(rows)


def runs_by_job(conn: psycopg.Connection[Any]) -> dict[int, int]:
    """How many times each job's handler started, from the ledger."""
    rows = conn.execute(
        "SELECT j.id, count(l.n) FROM notifyworker.jobs AS j"
        " LEFT JOIN ledger AS l ON l.n = (j.payload ->> 'n')::integer GROUP BY j.id"
    ).fetchall()
    return dict(rows)


async def until_final(conn: psycopg.Connection[Any], ids: list[int], within: float) -> None:
    """Every job of `ids` final within `within` seconds: the invariant, with the evidence."""
    try:
        await eventually(
            lambda: (
                scalar(
                    conn,
                    "SELECT count(*) FROM notifyworker.jobs"
                    " WHERE id = ANY(%s) AND status NOT IN ('done', 'failed', 'cancelled')",
                    ids,
                )
                == 0
            ),
            within=within,
        )
    except TimeoutError:
        raise AssertionError(
            f"not every job final within {within:.1f}s: {by_status(conn)}"
        ) from None


def worker_pid(conn: psycopg.Connection[Any], job_id: int) -> int:
    pid: int = scalar(
        conn,
        "SELECT w.pid FROM notifyworker.jobs AS j"
        " JOIN notifyworker.workers AS w ON w.id = j.worker_id WHERE j.id = %s",
        job_id,
    )
    return pid


@pytest.fixture
def fleet(database_url: str, anyio_backend_name: str) -> Iterator[Fleet]:
    workers = Fleet(database_url, env=DEFAULTS, backend=anyio_backend_name)
    yield workers
    # A failed scenario leaves hour-long handlers: cancel them rather than
    # wait out the shutdown grace.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT notifyworker.cancel(id) FROM notifyworker.jobs"
            " WHERE status NOT IN ('done', 'failed', 'cancelled')"
        )
    workers.stop_all()


def show(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print("\n" + line)


async def test_jobs_that_time_out_are_retried_to_the_end_on_two_workers(
    conn: psycopg.Connection[Any],
    database_url: str,
    fleet: Fleet,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No fault at all: 20 hanging jobs, timeout 1 s, max_attempts 3, on two workers.

    Expected: every job is timed out by the sweeper three times, retried twice
    (by whichever worker claims the retry), and ends `cancelled` with
    attempts = 3; the ledger shows exactly three runs per job; and all of it
    within FINAL_WITHIN of the insert. Finding 1 stranded about half of them
    `queued` on the worker that had not run the first attempt.
    """
    sweep, backoff, timeout, attempts, jobs = 0.5, 0.2, 1.0, 3, 20
    # Each attempt: its start slot, the timeout, at most one sweep to find it;
    # each retry: its backoff, and a poll when the worker that scheduled it
    # has no free consumer and the other finds it.
    final_within = (
        attempts * (PACING + timeout + sweep)
        + sum(retry_delay_max(a, backoff) + POLL for a in range(1, attempts))
        + SLACK
    )
    fleet.start(
        2,
        env={
            "NOTIFYWORKER_SWEEP_INTERVAL": f"{sweep:g}",
            "NOTIFYWORKER_RETRY_BACKOFF": f"{backoff:g}",
        },
    )
    await until_workers(conn, 2)
    watch = QueuedWatch(database_url, fleet.alive)
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(watch.run)
        inserted = anyio.current_time()
        ids = prepare(conn, jobs, seconds=HANGS, max_attempts=attempts, timeout=timeout)
        await until_final(conn, ids, final_within)
        took = anyio.current_time() - inserted
        nursery.cancel_scope.cancel()
    ended = scalar(
        conn,
        "SELECT count(*) FROM notifyworker.jobs WHERE status = 'cancelled' AND attempts = %s",
        attempts,
    )
    runs = runs_by_job(conn)
    result = audit(conn, db_now(conn))
    show(
        capsys,
        f"chaos stranded, no fault: {jobs} jobs timing out (timeout {timeout:g}s,"
        f" max_attempts {attempts}) on 2 workers: {ended} cancelled after {attempts} attempts,"
        f" {sum(runs.values())} runs (all accounted for: {result.unexplained == 0}), all final"
        f" {took:.1f}s after the insert (bound {final_within:.1f}s), longest queued wait on a"
        f" live worker {watch.longest:.2f}s (bound {QUEUED_AT_MOST:.1f}s)",
    )
    assert ended == jobs
    assert set(runs.values()) == {attempts}  # each ran exactly three times
    assert result.unexplained == 0
    assert result.never_ran == 0
    assert fleet.stop_all() == [0, 0]


@dataclass(frozen=True)
class Kill:
    victim: int  # the pid killed
    victims: list[int]  # the jobs it was running
    fault_at: datetime  # on the server's clock
    rerun_after: float  # seconds from the kill until all of them ran again on the survivor


async def kill_the_holder(
    conn: psycopg.Connection[Any], fleet: Fleet, ids: list[int], attempt: int, within: float
) -> Kill:
    """SIGKILL the worker running most of `ids` (at `attempt`); wait for the rerun.

    The invariant: within `within` seconds of the kill, every job it was
    running is `running` again, attempt `attempt + 1`, on the survivor.
    """
    holders = {job_id: worker_pid(conn, job_id) for job_id in ids}
    victim = max(set(holders.values()), key=list(holders.values()).count)
    victims = [job_id for job_id, pid in holders.items() if pid == victim]
    (survivor,) = fleet.alive() - {victim}
    fault_at = db_now(conn)
    killed = anyio.current_time()
    next(w for w in fleet.workers if w.pid == victim).process.send_signal(signal.SIGKILL)

    def rerun() -> bool:
        rows = conn.execute(
            "SELECT j.status, j.attempts, w.pid FROM notifyworker.jobs AS j"
            " LEFT JOIN notifyworker.workers AS w ON w.id = j.worker_id"
            " WHERE j.id = ANY(%s)",
            (victims,),
        ).fetchall()
        return all(row == ("running", attempt + 1, survivor) for row in rows)

    try:
        await eventually(rerun, within=within)
    except TimeoutError:
        raise AssertionError(
            f"the dead worker's {len(victims)} job(s) not running again (attempt {attempt + 1})"
            f" on the survivor within {within:.1f}s of the kill: {by_status(conn)}"
        ) from None
    return Kill(victim, victims, fault_at, anyio.current_time() - killed)


def rerun_within(attempt: int) -> float:
    """How soon a job running its `attempt` on a killed worker runs again elsewhere.

    The victim's last heartbeat is at most the kill itself: it is dead
    dead_worker_after later, found at the next sweep, the job retried after
    its backoff, claimed when due (or at the survivor's next poll), started.
    """
    return DEAD_AFTER + SWEEP + retry_delay_max(attempt) + POLL + PACING + SLACK


@pytest.mark.parametrize(
    "job_timeout",
    [
        pytest.param(120.0, id="rescue-alone"),
        # The finding's repro: the default 10 s timeout fires first on a 60 s job.
        pytest.param(10.0, id="after-a-timeout"),
    ],
)
async def test_sigkill_a_worker_whose_jobs_have_retries_left(
    conn: psycopg.Connection[Any],
    database_url: str,
    fleet: Fleet,
    capsys: pytest.CaptureFixture[str],
    job_timeout: float,
) -> None:
    """Six 60 s jobs with max_attempts 3 on two workers; SIGKILL the one running them.

    rescue-alone: the job timeout (120 s) never fires; the worker is killed
    during the first attempt, and the sweeper's dead-worker rescue (which
    NOTIFYs no cancel) brings the jobs back. Today's code passes it.

    after-a-timeout (finding 1's SIGKILL repro): the default 10 s timeout fires
    first (every worker hears the sweeper's cancel), the retries start
    (attempt 2, on either worker), and then the worker running most of them is
    killed. Their second attempt times out on the dead worker before it is
    declared dead, so the survivor's sweeper retries them (another cancel it
    hears) and the survivor claims the third attempt: finding 1 dropped those
    claims, leaving every job `queued` on the survivor, `consumers_busy 0`.

    Expected: the jobs never sit `queued` on a live worker; within
    rerun_within(attempt) of the kill (about 20 s at the default timing) the
    dead worker's jobs run again (next attempt) on the survivor; once cancelled
    from SQL all are final within SLACK; and every job ran exactly as often
    as its attempts say (no lost claims here).
    """
    attempts, jobs, seconds = 3, 6, 60.0
    # The attempt the jobs are in when the worker is killed.
    attempt = 1 if job_timeout > seconds else 2
    fleet.start(2)
    await until_workers(conn, 2)
    watch = QueuedWatch(database_url, fleet.alive)
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(watch.run)
        ids = prepare(conn, jobs, seconds=seconds, max_attempts=attempts, timeout=job_timeout)
        # The first attempt starts at once; a retry after a timeout, at most
        # one sweep, a backoff and a poll after the timeout.
        ready_within = PACING + SLACK
        if attempt == 2:
            ready_within += job_timeout + SWEEP + retry_delay_max(1) + POLL + PACING
        await eventually(
            lambda: (
                scalar(
                    conn,
                    "SELECT count(*) FROM notifyworker.jobs"
                    " WHERE status = 'running' AND attempts = %s",
                    attempt,
                )
                == jobs
            ),
            within=ready_within,
        )
        kill = await kill_the_holder(conn, fleet, ids, attempt, rerun_within(attempt))
        for job_id in ids:
            assert scalar(conn, "SELECT notifyworker.cancel(%s)", job_id) == "cancelled"
        await until_final(conn, ids, within=SLACK)
        nursery.cancel_scope.cancel()
    runs = runs_by_job(conn)
    tried = dict(conn.execute("SELECT id, attempts FROM notifyworker.jobs").fetchall())
    result = audit(conn, kill.fault_at)
    show(
        capsys,
        f"chaos stranded, SIGKILL with retries left (default timing, job timeout {job_timeout:g}s):"
        f" {len(kill.victims)} of {jobs} jobs on the killed worker in attempt {attempt}, all"
        f" running again on the survivor {kill.rerun_after:.1f}s after the kill (bound"
        f" {rerun_within(attempt):.1f}s), all final after cancel(), runs {sum(runs.values())}"
        f" (all accounted for: {result.unexplained == 0}), longest queued wait on a live"
        f" worker {watch.longest:.2f}s (bound {QUEUED_AT_MOST:.1f}s)",
    )
    assert all(tried[job_id] == attempt + 1 for job_id in kill.victims)
    assert runs == tried  # each start is one ledger row
    assert result.unexplained == 0
    assert fleet.stop_all() == [
        -signal.SIGKILL if w.pid == kill.victim else 0 for w in fleet.workers
    ]


async def test_sigkill_a_worker_while_jobs_time_out_on_both(
    conn: psycopg.Connection[Any],
    database_url: str,
    fleet: Fleet,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both paths crossed: hanging jobs time out (retries left) on both workers, one is killed.

    Four 60 s jobs (timeout 120 s) and twelve hanging ones (timeout 2 s), all
    with max_attempts 3, on two workers at the default timing; the worker with
    the most 60 s jobs is killed once the first retries have started.

    Expected: the dead worker's 60 s jobs run again (attempt 2) on the survivor
    within rerun_within(1) of the kill (about 20 s); every hanging job ends
    `cancelled` with attempts = 3 within hang_final_within of the kill (the
    retries of jobs the killed worker was running when they timed out
    included: the survivor heard their cancels, then claims them); no job ever
    sits `queued` on the survivor; every run accounted for.
    """
    attempts, long_jobs, hanging, timeout = 3, 4, 12, 2.0
    # A hanging job running on the victim is timed out by the survivor's
    # sweeper like any other. Worst case: one the victim had claimed but not
    # started waits for the dead-worker rescue (requeued, no backoff), then
    # runs its two remaining attempts, each to its timeout and the next sweep,
    # with the second retry's backoff and a poll before each.
    hang_final_within = (
        DEAD_AFTER + SWEEP + 2 * (POLL + PACING + timeout + SWEEP) + retry_delay_max(2) + SLACK
    )
    fleet.start(2)
    await until_workers(conn, 2)
    watch = QueuedWatch(database_url, fleet.alive)
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(watch.run)
        long_ids = prepare(conn, long_jobs, seconds=60.0, max_attempts=attempts, timeout=120.0)
        hang_ids = prepare(
            conn,
            hanging,
            seconds=HANGS,
            max_attempts=attempts,
            timeout=timeout,
            first=long_jobs + 1,
        )
        await eventually(
            lambda: (
                scalar(
                    conn,
                    "SELECT count(*) FROM notifyworker.jobs WHERE id = ANY(%s) AND attempts >= 2",
                    hang_ids,
                )
                > 0
            ),
            within=timeout + SWEEP + retry_delay_max(1) + POLL + SLACK,
        )
        kill = await kill_the_holder(conn, fleet, long_ids, 1, rerun_within(1))
        await until_final(conn, hang_ids, within=max(0.1, hang_final_within - kill.rerun_after))
        for job_id in long_ids:
            assert scalar(conn, "SELECT notifyworker.cancel(%s)", job_id) == "cancelled"
        await until_final(conn, long_ids, within=SLACK)
        nursery.cancel_scope.cancel()
    hung_out = scalar(
        conn,
        "SELECT count(*) FROM notifyworker.jobs"
        " WHERE id = ANY(%s) AND status = 'cancelled' AND attempts = %s",
        hang_ids,
        attempts,
    )
    # When the last of them ended, on the server's clock (they may end before
    # the 60 s jobs have run again).
    hang_final_after = scalar(
        conn,
        "SELECT extract(epoch FROM max(finished_at) - %s)::float8 FROM notifyworker.jobs"
        " WHERE id = ANY(%s)",
        kill.fault_at,
        hang_ids,
    )
    runs = runs_by_job(conn)
    result = audit(conn, kill.fault_at)
    show(
        capsys,
        f"chaos stranded, SIGKILL while jobs time out (default timing): {len(kill.victims)} of"
        f" {long_jobs} long jobs on the killed worker running again on the survivor"
        f" {kill.rerun_after:.1f}s after the kill (bound {rerun_within(1):.1f}s); {hung_out} of"
        f" {hanging} timing-out jobs cancelled after {attempts} attempts, all final"
        f" {hang_final_after:.1f}s after the kill (bound {hang_final_within:.1f}s); runs"
        f" {sum(runs.values())} (all accounted for: {result.unexplained == 0}), longest queued"
        f" wait on a live worker {watch.longest:.2f}s (bound {QUEUED_AT_MOST:.1f}s)",
    )
    assert hung_out == hanging
    assert all(runs[job_id] == (2 if job_id in kill.victims else 1) for job_id in long_ids)
    assert result.unexplained == 0
    assert result.never_ran == 0
    assert fleet.stop_all() == [
        -signal.SIGKILL if w.pid == kill.victim else 0 for w in fleet.workers
    ]
