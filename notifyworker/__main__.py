"""`python -m notifyworker` is the `notifyworker` command."""

from notifyworker.cli import main

main()
