"""From the journal to the broker: the publisher (one MQTT connection), batches and
their envelope, delivery tracking, the broker dialer and the status file.
"""
