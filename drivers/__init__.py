"""Device drivers: one module per device family behind one Driver interface."""
