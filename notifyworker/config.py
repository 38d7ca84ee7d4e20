"""Settings: one pydantic-settings model, from NOTIFYWORKER_* env vars and CLI flags."""

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

from notifyworker.errors import ConfigError
from notifyworker.models import rate_problem

# Where `up` keeps its embedded PostgreSQL between runs, relative to the cwd.
DEFAULT_DATA_DIR = Path(".notifyworker/pg")
# The conventional port of a pod's probes and metrics.
DEFAULT_HEALTH_PORT = 8080


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
    tasks: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Modules to import that register task handlers (comma-separated)."
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

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> Self:
        if self.dead_worker_after <= 2 * self.heartbeat_interval:
            raise ValueError(
                "dead_worker_after must be more than twice heartbeat_interval, "
                "or live workers would be declared dead"
            )
        return self

    def url(self) -> str:
        if self.database_url is None:
            raise ConfigError("DATABASE_URL is not set")
        return self.database_url.get_secret_value()


def load(**overrides: Any) -> Settings:
    """Settings from the environment, with CLI flags (non-None overrides) on top."""
    given = {key: value for key, value in overrides.items() if value is not None}
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
