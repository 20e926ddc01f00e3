"""Live keywords: upserts and deletes while serving, durable in a write-ahead log + snapshots.

``wal.py`` (the log's records on disk), ``snapshot.py`` (the live set written whole),
``liveset.py`` (the changes in memory, what both of them hold), ``keywords.py`` (the ingest
thread: encode, log, apply, answer). See the README's "Live keywords" section.
"""
