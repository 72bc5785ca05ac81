"""A TFF runtime (our own local C++ worker) shared by the federated tests of a session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tff_runtime():
    from recfl.core.federated.runtime import Runtime

    with Runtime() as runtime:
        yield runtime
