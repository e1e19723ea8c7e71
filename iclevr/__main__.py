"""Allow `python -m iclevr`."""

from iclevr.cli import main

main()
