"""The journal: the append-only SQLite store with seq and hash chain, its codec,
reader, recovery, salvage and disk-space guard. The single source of truth.
"""
