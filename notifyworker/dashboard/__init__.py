"""The web dashboard: queues, workers and jobs, live, and the few actions an operator needs.

`notifyworker dashboard` serves it; it needs only the database, so one
dashboard sees the whole fleet. The rooms:

    reads     what the pages read and the queue actions write (units of work)
    timeline  a job's row as a timeline
    security  the token, the session cookie, CSRF and same-origin checks
    views     the pages and actions (Starlette endpoints)
    app       the ASGI app and the server (hypercorn, on trio or asyncio)
"""

from notifyworker.dashboard.app import make_app, serve_dashboard

__all__ = ["make_app", "serve_dashboard"]
