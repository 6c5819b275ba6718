"""Delivery: accepted events go to the write-ahead log and the buffer, then in batches to storage, exactly once."""
