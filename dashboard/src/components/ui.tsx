import type { ReactNode } from "react";
import type { InstanceState } from "../api/client";
import type { Resource } from "../lib/hooks";
import type { LiveMode } from "../lib/events";
import { humanize } from "../lib/format";

export function Loading({ what = "Loading" }: { what?: string }) {
  return (
    <div className="loading" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" /> {what}…
    </div>
  );
}

export function ErrorBox({ message, onRetry }: { message: string; onRetry?: () => void }) {
  return (
    <div className="error-box" role="alert">
      <strong>Something went wrong.</strong> {message}
      {onRetry && (
        <button type="button" className="link" onClick={onRetry}>
          Try again
        </button>
      )}
    </div>
  );
}

export function NotAvailable({ what, path }: { what: string; path: string }) {
  return (
    <div className="not-available" role="note">
      <strong>{what} is not available yet.</strong> This API server does not provide{" "}
      <code>{path}</code>.
    </div>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <div className="empty">{children}</div>;
}

/** Loading / not-available / error / content for one resource. */
export function Guard<T>({
  res, what, path, children,
}: { res: Resource<T>; what: string; path: string; children: (data: T) => ReactNode }) {
  if (res.loading) return <Loading what={`Loading ${what.toLowerCase()}`} />;
  if (res.notAvailable) return <NotAvailable what={what} path={path} />;
  if (res.error && res.data === undefined) return <ErrorBox message={res.error} onRetry={() => void res.reload()} />;
  if (res.data === undefined) return null;
  return <>{children(res.data)}</>;
}

const STATE_TONE: Record<string, string> = {
  provisioning: "info", booting: "info", ready: "ok", draining: "warn", terminating: "warn",
  terminated: "muted", archived: "muted", startup_failed: "bad", provider_deleted: "bad",
};

export function StateBadge({ state }: { state: InstanceState | string }) {
  return (
    <span className={`badge badge-${STATE_TONE[state] ?? "muted"}`} data-state={state}>
      {humanize(state)}
    </span>
  );
}

export function ProgressBar({ value, label }: { value: number; label: string }) {
  const v = Math.max(0, Math.min(100, Math.round(value)));
  return (
    <div className="progress" role="progressbar" aria-label={label} aria-valuemin={0} aria-valuemax={100} aria-valuenow={v}>
      <div className={`progress-fill${v >= 100 ? " done" : ""}`} style={{ width: `${v}%` }} />
      <span className="progress-text">{v} %</span>
    </div>
  );
}

export function LiveIndicator({ mode }: { mode: LiveMode }) {
  const text = mode === "live" ? "Live" : mode === "polling" ? "Refreshing every few seconds" : "Connecting";
  return (
    <span className={`live live-${mode}`} role="status" aria-label={`Updates: ${text}`} title={
      mode === "live" ? "Receiving server events" : "The event stream is unavailable; polling instead"}>
      <span className="dot" aria-hidden="true" /> {text}
    </span>
  );
}

export function Stat({ label, value, hint }: { label: string; value: ReactNode; hint?: ReactNode }) {
  return (
    <div className="stat" role="group" aria-label={label}>
      <div className="stat-label">{label}</div>
      <div className="stat-value">{value}</div>
      {hint && <div className="stat-hint">{hint}</div>}
    </div>
  );
}

export function PageHeader({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <header className="page-header">
      <h1>{title}</h1>
      <div className="page-actions">{children}</div>
    </header>
  );
}

export function Notice({ tone, children, onClose }: { tone: "ok" | "bad"; children: ReactNode; onClose?: () => void }) {
  return (
    <div className={`notice notice-${tone}`} role={tone === "bad" ? "alert" : "status"}>
      <span>{children}</span>
      {onClose && (
        <button type="button" className="link" aria-label="Dismiss" onClick={onClose}>
          ×
        </button>
      )}
    </div>
  );
}
