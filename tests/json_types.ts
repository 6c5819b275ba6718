// How a JSON file meets Grafana's TypeScript types (@grafana/schema). Used by tests/grafana_types.py, which
// declares every checked value as `const name: <one of these> = <JSON>;` and compiles the file with tsc.

// T as JSON writes it. Grafana's string enums are TypeScript enums, and a JSON string is never an enum member:
// `${T}` turns a string enum into the union of its values ("area" | "line" | "none" for BigValueGraphMode), so
// "area" passes and "areas" does not. Numeric enums already accept their member numbers (and only those).
// Objects and arrays recurse; an object literal still gets TypeScript's excess-property check, so a misspelled
// key is an error.
export type Json<T> =
  T extends string ? `${T}` :
  T extends number | boolean | null | undefined ? T :
  T extends ReadonlyArray<infer U> ? Array<Json<U>> :
  T extends object ? { [K in keyof T]: Json<T[K]> } :
  T;

// Every field optional, at every level. A panel's saved options and custom field config may leave out any field:
// Grafana fills what is missing from the panel's option defaults when it loads the panel.
export type Partially<T> =
  T extends ReadonlyArray<infer U> ? Array<Partially<U>> :
  T extends object ? { [K in keyof T]?: Partially<T[K]> } :
  T;

// A panel's `options`, against its plugin's Options type.
export type Options<T> = Json<Partially<T>>;

// A panel's `fieldConfig.defaults.custom`, against its plugin's FieldConfig type.
export type Custom<T> = Json<Partially<T>>;

// The value of one field-config override property (`custom.drawStyle`, `unit`, ...): it replaces that property
// whole, so it is checked against the property's own type, not a partial one.
export type FieldConfigPatch<T> = Json<NonNullable<T>>;
