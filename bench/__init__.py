"""make bench: the performance table for the sync paths, next to a raw floor measured in the same run."""
