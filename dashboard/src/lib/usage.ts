// Usage, costs and chart metrics. Paths follow issue 6; rows are read leniently (field names
// such as requests / input_tokens / output_tokens / cost) so the pages keep working as the
// API's exact shapes settle.
import { client, request, rows, typed, type Result, type Schemas } from "../api/client";

export type Row = Record<string, unknown>;
export type Dimension = "day" | "key" | "model" | "project" | "deployment";

export const USAGE_PATH = "/api/v1/usage";
export const COSTS_PATH = "/api/v1/usage/costs";
export const METRICS_PATH = "/api/v1/metrics";

export function isoDay(d: Date): string {
  return d.toISOString().slice(0, 10);
}

/** [start, end) in UTC for two calendar days (YYYY-MM-DD), both included. */
export function dayRange(start: string, end: string): { start: string; end: string } {
  const next = new Date(`${end}T00:00:00Z`);
  next.setUTCDate(next.getUTCDate() + 1);
  return { start: `${start}T00:00:00Z`, end: next.toISOString() };
}

export type UsageReport = Schemas["UsageReport"];
export type UsageDimension = NonNullable<UsageReport["group_by"]>[number];

export async function fetchUsage(group_by: UsageDimension, start: string, end: string): Promise<Result<UsageReport>> {
  return typed(client.GET("/api/v1/usage", { params: { query: { group_by: [group_by], ...dayRange(start, end) } } }));
}

export async function fetchCosts(group_by: Dimension, start: string, end: string): Promise<Result<{ rows: Row[]; raw: unknown }>> {
  const r = await request<unknown>("GET", COSTS_PATH, { query: { group_by, ...dayRange(start, end) } });
  return r.ok ? { ...r, data: { rows: rows<Row>(r.data), raw: r.data } } : r;
}

export function num(row: Row | undefined, ...keys: string[]): number {
  if (!row) return 0;
  for (const k of keys) {
    const v = row[k];
    if (typeof v === "number") return v;
    if (typeof v === "string" && v !== "" && !Number.isNaN(Number(v))) return Number(v);
  }
  return 0;
}

export function label(row: Row, dim: Dimension): string {
  const candidates: Record<Dimension, string[]> = {
    day: ["day", "date", "bucket"],
    key: ["key_name", "api_key_name", "name", "key_prefix", "prefix", "api_key_id", "key"],
    model: ["model", "served_name"],
    project: ["project_name", "project", "project_id"],
    deployment: ["deployment_name", "deployment", "deployment_id"],
  };
  for (const k of candidates[dim]) {
    const v = row[k];
    if (v !== undefined && v !== null && v !== "") return String(v).slice(0, 40);
  }
  return "(none)";
}

export const REQUESTS = ["requests", "request_count", "count"];
export const TOKENS_IN = ["input_tokens", "prompt_tokens", "tokens_in"];
export const TOKENS_OUT = ["output_tokens", "completion_tokens", "tokens_out"];
export const ERRORS = ["errors", "error_count", "failed"];
export const COST = ["cost", "total_cost", "amount", "server_cost", "cost_eur"];

/** The current spend rate per hour, wherever the costs answer puts it. */
export function spendRate(raw: unknown): number | null {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return null;
  const o = raw as Row;
  for (const k of ["spend_rate_per_hour", "current_spend_rate", "spend_rate", "rate_per_hour", "per_hour"]) {
    if (typeof o[k] === "number") return o[k] as number;
  }
  return null;
}
