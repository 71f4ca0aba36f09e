"""State: the SQLite store (the only writer), migrations, read-only queries, retention."""
