"""Keyboard-wedge scanners: key events decoded into scans (evdev driver, shared decoder)."""
