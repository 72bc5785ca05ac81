"""Models defined outside ``recfl/``: what a user plugs in with ``[model] name = "package.module:factory"``."""
