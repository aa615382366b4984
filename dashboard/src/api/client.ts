// The dashboard's API client: types generated from the API's OpenAPI schema (schema.d.ts, by
// `npm run generate`) and openapi-fetch as the thin fetch wrapper. Same-origin cookie auth: the
// API sets the httpOnly `inventiv_session` cookie at login, every request sends it.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type InstanceSummary = Schemas["InstanceSummary"];
export type InstanceDetail = Schemas["InstanceDetail"];
export type InstanceAttention = Schemas["InstanceAttention"];
export type InstanceState = InstanceSummary["state"];
export type Deployment = Schemas["DeploymentPublic"];
export type Me = Schemas["Me"];

// X-Requested-With: the API refuses cookie-authenticated state changes without it (CSRF).
export const client = createClient<paths>({
  baseUrl: "",
  credentials: "same-origin",
  headers: { "X-Requested-With": "inventiv-dashboard" },
});

/** What every call resolves to: data, or an error already put in words. */
export type Result<T> =
  | { ok: true; data: T; status: number }
  | { ok: false; status: number; message: string; notAvailable: boolean };

type Listener = () => void;
const unauthorizedListeners = new Set<Listener>();
/** Called when the session has expired (any 401): the app goes back to the login page. */
export function onUnauthorized(fn: Listener): () => void {
  unauthorizedListeners.add(fn);
  return () => unauthorizedListeners.delete(fn);
}

/** FastAPI errors ({detail: "…"} or a validation list) as one sentence a person can read. */
export function describeError(status: number, body: unknown): string {
  const detail = (body as { detail?: unknown } | null)?.detail;
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail
      .map((d: { loc?: unknown[]; msg?: string }) => {
        const field = (d.loc ?? []).filter((p) => p !== "body" && p !== "query").join(".");
        return field ? `${field}: ${d.msg}` : (d.msg ?? "invalid input");
      })
      .join("; ");
  }
  if (status === 0) return "Cannot reach the API server. Check that it is running.";
  if (status === 401) return "Your session has expired: please sign in again.";
  if (status === 403) return "You are not allowed to do this.";
  if (status === 404) return "Not found.";
  if (status >= 500) return `The server failed (HTTP ${status}). Try again in a moment.`;
  return `Request failed (HTTP ${status}).`;
}

function failure(status: number, body: unknown, path: string): Result<never> {
  if (status === 401 && !path.endsWith("/auth/login")) unauthorizedListeners.forEach((fn) => fn());
  // An endpoint this API server lacks (older server): FastAPI's default 404, or the SPA
  // fallback's "no API route"; a 404 about a missing row carries its own message instead.
  const detail = (body as { detail?: unknown } | null)?.detail;
  const missingRoute = status === 405 || (status === 404 && (detail === "Not Found" || (typeof detail === "string" && detail.startsWith("no API route"))));
  return { ok: false, status, message: describeError(status, body), notAvailable: missingRoute };
}

/** Wrap an openapi-fetch call (typed by the generated schema) into a Result. */
export async function typed<T>(
  call: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<Result<T>> {
  try {
    const { data, error, response } = await call;
    if (response.ok) return { ok: true, data: data as T, status: response.status };
    return failure(response.status, error, new URL(response.url, location.href).pathname);
  } catch {
    return failure(0, null, "");
  }
}
