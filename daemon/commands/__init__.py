"""Subcommands of the ``scanfleet`` console script, one module each.

Each module has ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` on it. Modules import heavy or hardware libraries inside
their functions, never at import time, so ``scanfleet --help`` always works.
"""
