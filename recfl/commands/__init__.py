"""Command modules of the ``recfl`` CLI (see :mod:`recfl.cli`)."""
