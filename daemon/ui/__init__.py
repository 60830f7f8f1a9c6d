"""What the daemon shows on a terminal: the live view and the station view."""
