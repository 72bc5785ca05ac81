"""Quiet by default: the one rule for the logging of the libraries recfl drives, applied when :mod:`recfl` is
imported (by the command line, the Python API, a stage or a notebook alike).

TensorFlow logs from C++ to stderr (CUDA probes on a CPU machine, one grappler session per traced function:
69 lines for a small train and simulate), which only ``TF_CPP_MIN_LOG_LEVEL``, set before TensorFlow loads,
turns off. A level set in the environment before recfl was imported is the user's choice and always wins.
"""

from __future__ import annotations

import logging
import os

TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
NOISY_LOGGERS = ("absl", "tensorflow", "h5py", "matplotlib")
_USER_LEVEL = os.environ.get(TF_LOG_LEVEL)  # read once, at the first import of recfl


def quiet_libraries(debug: bool = False) -> None:
    """TensorFlow's C++ logging off (on with ``debug``) unless the user set its level; the Python loggers of
    absl, TensorFlow, h5py and matplotlib at WARNING. Takes effect for TensorFlow only if it is not loaded yet."""
    os.environ[TF_LOG_LEVEL] = _USER_LEVEL if _USER_LEVEL is not None else "0" if debug else "3"
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
