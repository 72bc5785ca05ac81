"""The application layer: the ``recfl`` command, the end-to-end pipeline, the config-section table and the
Python API. It sits above every stage and is imported by none of them."""
