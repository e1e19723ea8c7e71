"""docs/commands.md is the CLI's own reference: regenerated from the Typer app, never edited by hand."""

import pytest

from iclevr.cli import reference


def test_the_committed_command_reference_is_current():
    stale = f"docs/commands.md is stale: run `{reference.REGENERATE}`"
    assert reference.PAGE.read_text() == reference.generate(), stale


def test_the_reference_names_every_command_and_option():
    page = reference.generate()
    for command in (
        "train",
        "sample",
        "denoise-trace",
        "eval",
        "compare-schedules",
        "demo",
        "data check",
        "data synth",
        "evaluator train",
        "export",
    ):
        assert f"## `iclevr {command}`" in page
    assert "| `--labels` |" in page and "| `--epochs` |" in page


def test_a_changed_help_text_makes_the_page_stale(monkeypatch):
    """The check above can fail: a command whose help changes no longer matches the committed page."""
    import typer

    from iclevr.cli.app import app

    committed = reference.PAGE.read_text()
    click_app = typer.main.get_command(app)
    monkeypatch.setattr(typer.main, "get_command", lambda _app: click_app)
    monkeypatch.setattr(click_app.commands["sample"], "help", "Draw something else.")
    assert reference.generate() != committed and "Draw something else." in reference.generate()


@pytest.mark.parametrize("argv, code", [(["--check"], 0), (["--bogus"], 2)])
def test_the_check_command(argv, code, capsys):
    assert reference.main(argv) == code
