"""One writer per output folder (recfl/core/locks.py): refused across processes, nested within one."""

from __future__ import annotations

import pytest
from lock_holder import held_elsewhere, try_hold

from recfl.core.errors import RecflError
from recfl.core.locks import exclusive


def test_a_folder_another_process_holds_is_one_line_until_that_process_ends(tmp_path):
    with held_elsewhere(tmp_path / "out", "recfl run"):
        with pytest.raises(RecflError, match=r"out is in use by another recfl run; wait for it to finish or use another --out$"):
            with exclusive(tmp_path / "out", "recfl run"):
                pass
    with exclusive(tmp_path / "out", "recfl run"):  # killed: the kernel dropped its lock
        pass


def test_a_hold_nests_within_one_process_and_ends_with_the_outer_one(tmp_path):
    out = tmp_path / "out"
    with exclusive(out, "recfl run"):
        with exclusive(tmp_path / "." / "out", "recfl run"):  # the same folder, however it is spelled
            pass
        probe = try_hold(out, "recfl run")
        assert probe.returncode == 1 and "is in use by another recfl run" in probe.stderr  # still held after the inner one
    probe = try_hold(out, "recfl run")
    assert probe.returncode == 0 and probe.stdout.strip() == "held"
