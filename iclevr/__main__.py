"""Allow `python -m iclevr`."""

from iclevr.cli.app import main

main()
