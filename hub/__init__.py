"""The scanfleet hub: ingest into PostgreSQL, completeness audit, gap repair, export."""
