"""Device drivers: one module per device family behind one Driver interface.

Each driver module defines its config model and its :class:`~scanfleet.drivers.base.Driver`
subclass; :mod:`scanfleet.drivers.registry` lists them (one line per driver), builds the
``[[devices]]`` config union and opens the driver a config names. This package imports
nothing itself, so ``from scanfleet.drivers import ssi`` stays cheap.
"""
