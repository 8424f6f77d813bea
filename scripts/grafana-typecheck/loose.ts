// Grafana's dashboard types use TypeScript enums for some string fields
// (e.g. FieldColorModeId), which plain JSON strings can never satisfy.
// `Loose<T>` turns every enum into the union of its string values and keeps
// everything else, so the check is exactly the schema, written as JSON.
export type Loose<T> = T extends string
  ? `${T}`
  : T extends Array<infer U>
    ? Array<Loose<U>>
    : T extends object
      ? { [K in keyof T]: Loose<T[K]> }
      : T;
