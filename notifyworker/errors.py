"""The one exception hierarchy of notifyworker.

    NotifyWorkerError
    ├── ConfigError          a setting or a CLI argument is wrong
    ├── JobRefused           the job named cannot do what was asked
    │   └── NoSuchJob        there is no job with that id
    ├── Forbidden            the dashboard refuses a request: no token, a wrong one, another origin
    ├── BadRequest           a request to the dashboard names no status, no job id, …
    ├── TaskError            a job cannot be run as written
    │   ├── UnknownTask
    │   ├── InvalidPayload
    │   └── InvalidJob       an option of a job to enqueue (its timeout, its run_at)
    └── DatabaseError        PostgreSQL refused or could not be reached
        ├── Transient        retrying may help
        │   ├── ConnectionLost   the connection dropped
        │   │   └── AccessDenied the server refuses this URL
        │   └── DatabaseBusy     a statement was cancelled: a timeout, a lock wait, a deadlock
        ├── RowRejected      a row broke a constraint
        ├── SchemaMissing    `notifyworker migrate` has not run
        └── SchemaOutdated   migrations are pending

Every message is written for the person reading the log: a user's mistake is
shown as this one line at the CLI boundary, never as a traceback.
"""

from __future__ import annotations


class NotifyWorkerError(Exception):
    """notifyworker failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigError(NotifyWorkerError):
    """A setting is invalid."""


class JobRefused(NotifyWorkerError):
    """The job cannot do what was asked (say, a retry of a running job)."""


class NoSuchJob(JobRefused):
    """There is no job with that id."""


class Forbidden(NotifyWorkerError):
    """The dashboard refuses this request: it needs the token, from the dashboard's own pages."""


class BadRequest(NotifyWorkerError):
    """The dashboard cannot use this request as written (a filter, a job id, a form)."""


class TaskError(NotifyWorkerError):
    """The job cannot be run."""


class UnknownTask(TaskError):
    """No handler is registered under this task name."""


class InvalidPayload(TaskError):
    """The payload does not match the task's model."""


class InvalidJob(TaskError):
    """An option of the job to enqueue cannot be stored as given."""


class DatabaseError(NotifyWorkerError):
    """PostgreSQL refused the statement."""


class Transient(DatabaseError):
    """PostgreSQL could not do it now; the same unit of work may succeed later."""


class ConnectionLost(Transient):
    """The connection to PostgreSQL failed or dropped."""


class DatabaseBusy(Transient):
    """PostgreSQL cancelled the statement (a timeout, a lock wait, a deadlock, a conflict).

    The connection is still good and nothing was written: a background task
    retries it, like a lost connection, rather than taking the statement for
    a verdict on its data.
    """


class RowRejected(DatabaseError):
    """PostgreSQL rejected the row."""


class SchemaMissing(DatabaseError):
    """The notifyworker schema is missing: run `notifyworker migrate`."""


class SchemaOutdated(DatabaseError):
    """The notifyworker schema is behind this version: run `notifyworker migrate`."""


class AccessDenied(ConnectionLost):
    """The server answered but refuses this URL (password, role, database).

    At start-up that is a user mistake, reported at once; once running it is
    treated like any lost connection and retried, since a restarting server
    or a changing pg_hba.conf can say it for a moment.
    """
