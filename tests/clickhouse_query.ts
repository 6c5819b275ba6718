// The ClickHouse plugin's raw-SQL query model as grafana-clickhouse-datasource 4.20.0 declares it, restated for the
// tests (read in v4.20.0: src/types/sql.ts CHSqlQuery on @grafana/schema's DataQuery, src/types/queryBuilder.ts
// QueryType, src/data/utils.ts format numbers, src/plugin.json id). Builder queries are not used here.
import type { DataQuery } from "@grafana/schema";

// sqlutil's FormatQueryOption as the plugin maps it (src/data/utils.ts): 0 time series, 1 table, 2 logs, 3 trace,
// 4 multi. The plugin types `format` as any number; the backend knows these five.
export type Format = 0 | 1 | 2 | 3 | 4;

export interface ClickHouseSqlQuery<Version extends string> extends DataQuery {
  datasource?: { type: "grafana-clickhouse-datasource"; uid: string };
  pluginVersion: Version;
  editorType: "sql";
  rawSql: string;
  format?: Format;
  queryType?: "table" | "logs" | "timeseries" | "traces";
  meta?: { timezone?: string; builderOptions?: unknown };
  expand?: boolean;
}

// An alert rule's query model: the datasource's query plus what Grafana's alerting reads from it
// (pkg/services/ngalert/models/alert_query.go: intervalMs, default 1000; maxDataPoints, default 43200).
export interface AlertQueryModel<Version extends string> extends ClickHouseSqlQuery<Version> {
  intervalMs?: number;
  maxDataPoints?: number;
}

// A query variable's query as the plugin persists it in the dashboard (read in v4.20.0: src/data/CHVariableSupport.tsx
// CHVariableQuery). At run time the plugin runs `rawSql` as it is, whatever the queryType that generated it.
export interface ClickHouseVariableQuery {
  refId: string;
  queryType: "sql" | "databases" | "tables" | "columns" | "columnValues";
  rawSql?: string;
  database?: string;
  table?: string;
  column?: string;
  mapKey?: string;
  columnIsMap?: boolean;
}
