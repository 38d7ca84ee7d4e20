"""A background-jobs service that lives inside PostgreSQL."""

__version__ = "0.1.0"
