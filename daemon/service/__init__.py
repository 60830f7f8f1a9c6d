"""Integration with the service manager (systemd sd_notify and watchdog)."""
