"""The event contract: what an event is (events: standard library only) and how one is judged (validation)."""
