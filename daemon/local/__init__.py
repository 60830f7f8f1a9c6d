"""The local interface the counter's POS/HIS talks to."""
