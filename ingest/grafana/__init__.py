"""The Grafana emulation: the ClickHouse plugin's macros, the frontend's template variables and the dashboard's panels
as data. Pure: no engine, no HTTP."""
