"""The command line: app.py holds the Typer app and its command table; one module per command."""
