// Usage, costs and chart metrics. Paths follow issue 6; rows are read leniently (field names
// such as requests / input_tokens / output_tokens / cost) so the pages keep working as the
// API's exact shapes settle.
import { client, typed, type Result, type Schemas } from "../api/client";
import { fmtMoney } from "./format";

export type Row = Record<string, unknown>;
export type Dimension = "day" | "key" | "model" | "project" | "deployment" | "instance";

export const USAGE_PATH = "/api/v1/usage";
export const COSTS_PATH = "/api/v1/costs";
export const METRICS_PATH = "/api/v1/metrics/requests";

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

export type CostReport = Schemas["CostReport"];
export type CostDimension = Schemas["CostDimension"];
export type CurrencyAmount = Schemas["CurrencyAmount"];

export async function fetchCosts(group_by: CostDimension, start: string, end: string): Promise<Result<CostReport>> {
  return typed(client.GET("/api/v1/costs", { params: { query: { group_by: [group_by], ...dayRange(start, end) } } }));
}

/** "€1.20 + $0.40": amounts in every currency present (usually one). */
export function money(amounts: CurrencyAmount[] | undefined, digits = 2): string {
  if (!amounts || amounts.length === 0) return fmtMoney(0, "EUR", digits);
  return amounts.map((a) => fmtMoney(a.amount, a.currency, digits)).join(" + ");
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
    instance: ["instance_id"],
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

