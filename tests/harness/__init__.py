"""What the tests and the benchmarks share: the service as a real process, the engine's data, events, ports.

Modules are named for what they hold; import from them (`from tests.harness.service import Service`), not from here.
"""
