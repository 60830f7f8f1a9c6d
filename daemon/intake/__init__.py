"""From a device to a classified read: device workers (one thread per device), the
classification of raw reads, identity-card pairing, and the pipeline that hands each
scan to the station and the journal.
"""
