"""One result record per run, where it came from, and the append-only history."""
