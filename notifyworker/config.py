"""Settings: one pydantic-settings model, from NOTIFYWORKER_* env vars and CLI flags.

The database URL, the one secret, comes from exactly one place: the command
line (`--database-url` or `--database-url-file`) over the environment
(`DATABASE_URL` or `NOTIFYWORKER_DATABASE_URL_FILE`); a URL and a file at the
same level are refused. A file keeps the password out of `ps` and is how
Kubernetes mounts a Secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from notifyworker import dburl
from notifyworker.errors import ConfigError
from notifyworker.models import (
    FOREVER,
    Retention,
    duration_problem,
    parse_duration,
    rate_problem,
)

# Where `up` keeps its embedded PostgreSQL between runs, relative to the cwd.
DEFAULT_DATA_DIR = Path(".notifyworker/pg")
# The conventional port of a pod's probes and metrics.
DEFAULT_HEALTH_PORT = 8080
# The dashboard's: this machine only unless told otherwise, off the probes' port.
DEFAULT_DASHBOARD_HOST = "127.0.0.1"
DEFAULT_DASHBOARD_PORT = 8000
# A dashboard token shorter than this is refused: it guards actions on live jobs.
MIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Every knob of the service. Durations are in seconds."""

    model_config = SettingsConfigDict(
        env_prefix="NOTIFYWORKER_", frozen=True, extra="forbid", populate_by_name=True
    )

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "NOTIFYWORKER_DATABASE_URL", "database_url"),
        description="PostgreSQL URL; unset means `up` starts an embedded server.",
    )
    database_url_file: Path | None = Field(
        default=None,
        description="A file holding the PostgreSQL URL (a mounted Secret); read at start-up.",
    )
    concurrency: int = Field(default=10, ge=1, le=1000, description="Jobs run at once.")
    rate: float = Field(
        default=50.0,
        description="Job starts per second in this process; 0 means unlimited.",
    )
    poll_interval: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Claim at least this often, in case a notification was missed.",
    )
    sweep_interval: float = Field(
        default=1.0, gt=0, le=3600, description="How often the sweeper looks for dead jobs."
    )
    heartbeat_interval: float = Field(
        default=2.0, gt=0, le=3600, description="How often a worker proves it is alive."
    )
    dead_worker_after: float = Field(
        default=15.0,
        gt=0,
        le=86_400,
        description="A worker silent this long is dead; its jobs are rescued.",
    )
    shutdown_grace: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long running jobs may finish before being cancelled.",
    )
    retry_backoff: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="First retry's delay; each further retry doubles it (with jitter).",
    )
    retry_backoff_max: float = Field(
        default=300.0, gt=0, le=86_400, description="Longest delay between two attempts."
    )
    max_payload_bytes: int = Field(
        default=1_048_576,
        ge=2,
        le=256 * 1_048_576,
        description="A job whose payload's JSON text is longer fails without running.",
    )
    listener_check_interval: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="A quiet listener proves itself with a NOTIFY round trip this often.",
    )
    startup_timeout: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="How long `run` retries an unreachable database before giving up; 0: forever.",
    )
    # Retention: seconds a finished job is kept, by its status; None ("forever"): kept.
    retention_done: float | None = Field(
        default=86_400.0, description="How long a done job is kept: a duration, or forever."
    )
    retention_failed: float | None = Field(
        default=7 * 86_400.0, description="How long a failed job is kept: a duration, or forever."
    )
    retention_cancelled: float | None = Field(
        default=7 * 86_400.0,
        description="How long a cancelled job is kept: a duration, or forever.",
    )
    prune_batch: int = Field(
        default=1000, ge=1, le=100_000, description="Most finished jobs one prune batch deletes."
    )
    prune_interval: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How often the fleet looks for expired jobs when the last batch was not full.",
    )
    tasks: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Modules to import that register task handlers (comma-separated)."
    )
    queues: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        default=None,
        description="Queues this worker serves (comma-separated); unset: every queue.",
    )
    backend: Literal["trio", "asyncio"] = Field(
        default="trio",
        description="The event loop: trio, or asyncio for handlers that await asyncio libraries.",
    )
    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR, description="Data folder of the embedded PostgreSQL."
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="json: a JSON object a line; text: readable lines; auto: JSON off a terminal.",
    )
    health_port: int | None = Field(
        default=DEFAULT_HEALTH_PORT,
        ge=0,
        le=65535,
        description="Port of /livez, /readyz and /metrics; 0 picks a free one; off disables them.",
    )
    health_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - probes and scrapers reach a pod on its own address
        min_length=1,
        description="Address the health and metrics endpoints listen on.",
    )

    @field_validator("health_port", mode="before")
    @classmethod
    def _port_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"off", "none", ""}:
            return None
        return value

    @field_validator("rate")
    @classmethod
    def _rate_rule(cls, value: float) -> float:
        if problem := rate_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("retention_done", "retention_failed", "retention_cancelled", mode="before")
    @classmethod
    def _retention_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().lower() == FOREVER:
                return None
            return parse_duration(value)
        return value

    @field_validator("retention_done", "retention_failed", "retention_cancelled")
    @classmethod
    def _retention_rule(cls, value: float | None) -> float | None:
        if value is not None and (problem := duration_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None  # an empty variable, as a template leaves it: every queue
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one queue name, or leave it unset for every queue")
        for name in value:
            if problem := queue_name_problem(name):
                raise ValueError(problem)
        return tuple(dict.fromkeys(value))  # each once, in the order given

    @model_validator(mode="after")
    def _one_database_url(self) -> Self:
        # ConfigError, not ValueError: pydantic passes it through, so the message stays
        # one plain sentence naming the file, never "invalid settings: …".
        if self.database_url_file is not None:
            if self.database_url is not None:
                raise ConfigError(
                    "DATABASE_URL and NOTIFYWORKER_DATABASE_URL_FILE are both set: keep one"
                )
            # The model is frozen; this is its construction, so the one write is allowed.
            object.__setattr__(self, "database_url", SecretStr(_read_url(self.database_url_file)))
        if self.database_url is not None:
            _check_url(self.database_url.get_secret_value())
        return self

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> Self:
        if self.dead_worker_after <= 2 * self.heartbeat_interval:
            raise ValueError(
                "dead_worker_after must be more than twice heartbeat_interval, "
                "or live workers would be declared dead"
            )
        return self

    def retention(self) -> Retention:
        return Retention(self.retention_done, self.retention_failed, self.retention_cancelled)

    def url(self) -> str:
        if self.database_url is None:
            raise ConfigError("DATABASE_URL is not set")
        return self.database_url.get_secret_value()


def queue_name_problem(name: str) -> str | None:
    """What is wrong with a queue name, as the queues' CHECK says it (0014_queues.sql)."""
    if not 1 <= len(name) <= 100:
        return f"a queue name is 1 to 100 characters (got {len(name)})"
    if any(ch in name for ch in " \t\r\n\x0b\f"):
        return f"a queue name has no whitespace: {name!r}"
    return None


def _read_url(path: Path) -> str:
    """The URL in a file, less one trailing newline; never quoted in an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the database URL file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"the database URL file {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise ConfigError(f"the database URL file {path} is empty")
    return text


def _check_url(url: str) -> None:
    """Refuse, before any connection, a URL whose password libpq would misread."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the environment arrive as surrogates
        raise ConfigError("DATABASE_URL is not valid UTF-8 text") from None
    password = dburl.userinfo_password(url)
    if password is not None and dburl.needs_encoding(password):
        raise ConfigError(
            "the password in DATABASE_URL contains characters that must be percent-encoded "
            "(e.g. @ as %40, / as %2F, % as %25); the user:password part ends at the URL's last @"
        )


class DashboardSettings(BaseSettings):
    """The web dashboard's own knobs (NOTIFYWORKER_DASHBOARD_*); its database is Settings'."""

    model_config = SettingsConfigDict(
        env_prefix="NOTIFYWORKER_DASHBOARD_", frozen=True, extra="forbid", populate_by_name=True
    )

    host: str = Field(
        default=DEFAULT_DASHBOARD_HOST, min_length=1, description="Address the dashboard serves on."
    )
    port: int = Field(
        default=DEFAULT_DASHBOARD_PORT, ge=0, le=65535, description="Its port; 0 picks a free one."
    )
    token: SecretStr | None = Field(
        default=None,
        description="Actions (cancel, retry, pause, rate) need it; unset, they are off.",
    )
    token_for_reads: bool = Field(
        default=False, description="Reading the pages needs the token too."
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_LENGTH:
            # The message names the rule, never the value.
            raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters")
        return value

    @model_validator(mode="after")
    def _reads_need_a_token(self) -> Self:
        if self.token_for_reads and self.token is None:
            raise ValueError("token_for_reads needs NOTIFYWORKER_DASHBOARD_TOKEN")
        return self


def load_dashboard(**overrides: Any) -> DashboardSettings:
    """The dashboard's settings from the environment, with CLI flags (non-None) on top."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return DashboardSettings(**given)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def load(**overrides: Any) -> Settings:
    """Settings from the environment, with CLI flags (non-None overrides) on top."""
    given = {key: value for key, value in overrides.items() if value is not None}
    url_flags = {"database_url", "database_url_file"} & given.keys()
    if len(url_flags) == 2:
        raise ConfigError("give --database-url or --database-url-file, not both")
    if url_flags:
        # A flag wins over the environment, whichever of the two each names.
        given = {"database_url": None, "database_url_file": None, **given}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        problems.append(f"{where}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)
