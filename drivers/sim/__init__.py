"""Simulated devices: realistic code mixes and a pty serial scanner for tests and demos."""
