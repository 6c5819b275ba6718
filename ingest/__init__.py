"""Real-time product analytics ingest: validate events, batch them into ClickHouse.

The data's path, and the packages in the order they may import each other (pyproject.toml's import-linter
contracts check it; each imports only from those below):

    cli        one module per command: serve, panels, demo, rebuild-rollups
    api        the HTTP edge (aiohttp): POST /events -> decode -> judge -> delivery
    terminal   the dashboard in a terminal        demo   traffic through the Python client (clients/python)
    delivery   write-ahead log, buffer, idempotency keys, the pipeline into storage, dead letters
    metrics    the Prometheus registry of one app
    storage    ClickHouse: the sink, the DDL, failure kinds, rollups
    grafana    the plugin's macros, the frontend's variables, the panels as data (beside storage)
    contract   what an event is (events, standard library only) and how one is judged (validation)
    config, shipped, errors
"""
