"""The station context of a scan: operation, bill, operator, receiving sessions,
manual entries and the duplicate check with its index.
"""
