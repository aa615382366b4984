// Live events: one shared EventSource on GET /api/v1/events (same-origin, so the session cookie
// goes with it). When the stream cannot be opened (endpoint missing, proxy without SSE, server
// restarting) subscribers fall back to polling until it comes back.
import { useEffect, useRef, useState } from "react";
import { useInterval } from "./hooks";

export interface LiveEvent {
  type: string;
  data: unknown;
  id: string;
}
export type LiveMode = "connecting" | "live" | "polling";

type Handler = (e: LiveEvent) => void;
const handlers = new Set<Handler>();
const modeListeners = new Set<(m: LiveMode) => void>();
let source: EventSource | null = null;
let mode: LiveMode = "connecting";
let retryTimer: number | null = null;

// Event names the API may use; unnamed events arrive as "message".
const EVENT_TYPES = [
  "message", "instance", "instance_state", "instance.state", "instance_updated", "instance.updated",
  "action", "instance_action", "instance.action", "scaling", "scaling_decision", "scaling.decision",
  "state", "transition", "deployment", "reconciler", "autoscaler", "scale", "metrics", "usage",
];

function setMode(m: LiveMode): void {
  mode = m;
  modeListeners.forEach((fn) => fn(m));
}

function open(): void {
  if (source || typeof EventSource === "undefined") {
    if (typeof EventSource === "undefined") setMode("polling");
    return;
  }
  const es = new EventSource("/api/v1/events", { withCredentials: true });
  source = es;
  es.onopen = () => setMode("live");
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      // Refused for good (404, 401, not an event stream): poll, and try the stream again later.
      es.close();
      source = null;
      setMode("polling");
      if (retryTimer === null && handlers.size > 0) {
        retryTimer = window.setTimeout(() => {
          retryTimer = null;
          if (handlers.size > 0) open();
        }, 15000);
      }
    } else {
      setMode("polling"); // the browser reconnects by itself (with Last-Event-ID); poll meanwhile
    }
  };
  const dispatch = (type: string) => (ev: MessageEvent) => {
    let data: unknown = ev.data;
    try {
      data = JSON.parse(ev.data);
    } catch {
      /* plain text */
    }
    if (mode !== "live") setMode("live");
    handlers.forEach((fn) => fn({ type, data, id: ev.lastEventId }));
  };
  for (const t of EVENT_TYPES) es.addEventListener(t, dispatch(t) as EventListener);
}

function close(): void {
  if (retryTimer !== null) window.clearTimeout(retryTimer);
  retryTimer = null;
  source?.close();
  source = null;
  setMode("connecting");
}

/**
 * Subscribe to live events while mounted. `onEvent` runs for every event; `poll` runs every
 * `pollMs` while the stream is not live (and every `pollMs * 10` while it is, as a safety net).
 */
export function useLiveEvents(onEvent: Handler, poll: () => void, pollMs = 3000): LiveMode {
  const [current, setCurrent] = useState<LiveMode>(mode);
  const ref = useRef(onEvent);
  ref.current = onEvent;
  useEffect(() => {
    const handler: Handler = (e) => ref.current(e);
    handlers.add(handler);
    modeListeners.add(setCurrent);
    open();
    setCurrent(mode);
    return () => {
      handlers.delete(handler);
      modeListeners.delete(setCurrent);
      if (handlers.size === 0) close();
    };
  }, []);
  useInterval(poll, current === "live" ? pollMs * 10 : pollMs);
  return current;
}

/** The instance id an event is about, whatever its exact shape. */
export function eventInstanceId(data: unknown): string | undefined {
  if (!data || typeof data !== "object") return undefined;
  const d = data as Record<string, unknown>;
  const inner = (d.instance ?? d.data) as Record<string, unknown> | undefined;
  const id = d.instance_id ?? inner?.id ?? inner?.instance_id ?? d.id;
  return typeof id === "string" ? id : undefined;
}
