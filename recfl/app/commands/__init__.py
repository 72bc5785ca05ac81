"""Command modules of the ``recfl`` CLI (see :mod:`recfl.app.cli`)."""
