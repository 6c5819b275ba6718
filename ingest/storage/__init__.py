"""Storage: ClickHouse through one client (sink), the DDL, how inserts fail, and the rollups' upkeep."""
