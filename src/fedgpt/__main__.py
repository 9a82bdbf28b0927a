"""``python -m fedgpt`` is the ``fedgpt`` command."""

from fedgpt.cli.main import app

app()
