"""``python -m mlref.cli``: the ``mlref`` command for processes started with this interpreter."""

from mlref.cli import app

app(prog_name="mlref")
