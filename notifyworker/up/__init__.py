"""`notifyworker up`: a worker, a demo producer and a live table on one screen.

Only the `up` command imports this package: the demo producer, the embedded
PostgreSQL and the live view are a newcomer's tour, never part of a worker.
"""
