"""Ctrl-C ends any command with one line and exit code 130, even when it lands where Python cannot raise it.

The pipeline and its device workers are interrupted with real signals in ``test_pipeline.py``.
"""

from __future__ import annotations

import subprocess
import sys

# A gc callback that raises KeyboardInterrupt once: what a SIGINT does when it arrives while Python runs a gc
# callback (TensorFlow Federated's jax registers one), where the exception is "ignored" with a traceback and lost.
INTERRUPT_IN_GC_CALLBACK = """
import gc, signal, sys
from recfl.app.cli import main
signal.signal(signal.SIGINT, signal.default_int_handler)  # as the recfl entry point does: a background job starts ignoring it
fired = []
def callback(phase, info):
    if not fired:
        fired.append(phase)
        raise KeyboardInterrupt
gc.callbacks.append(callback)
sys.exit(main(sys.argv[1:]))
"""


def test_an_interrupt_swallowed_by_a_gc_callback_still_stops_the_command(tmp_path):
    out = tmp_path / "synth"
    done = subprocess.run([sys.executable, "-c", INTERRUPT_IN_GC_CALLBACK, "data", "synth", "--users", "3000",
                           "--items", "1000", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "recfl: interrupted" and "Traceback" not in done.stderr, done.stderr
    assert not (out / "manifest.json").exists()  # stopped, not run to the end


# A stage that swallows the interrupt, as native code that clears the error it finds does (one `recfl run` in 15,
# interrupted while TensorFlow trained the cloud model, went on to its end with exit code 0).
SWALLOWED_IN_A_STAGE = """
import os, signal, sys, time
import recfl.__main__ as entry
import recfl.app.pipeline as pipeline
original = pipeline.build_pool
def swallowing(*args, **kwargs):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        pass
    return original(*args, **kwargs)
pipeline.build_pool = swallowing
sys.argv[0] = "recfl"
sys.exit(entry.start())
"""


def test_an_interrupt_a_stage_swallowed_still_stops_the_run(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SWALLOWED_IN_A_STAGE, "run", "--out", str(out),
                           "--set", "synthetic.users=200"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "recfl: interrupted" and "Traceback" not in done.stderr, done.stderr
    assert (out / "pool" / "stage.json").is_file() and not (out / "cloud_model" / "stage.json").exists()
