"""Foundations every other part uses and that use nothing of ours: errors, the scan
model, personal data, configuration, logging, clock, alarms, backoff, redaction,
state files and the MQTT client helper (shared with provisioning and the hub).
"""
