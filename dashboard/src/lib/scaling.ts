// The autoscaler's decisions (GET /deployments/{id}/decisions) as chart data: what it saw each
// round (instances, load) and the rounds that scaled. Pure functions, unit-tested.
import type { Schemas } from "../api/client";

export type Decision = Schemas["ScalingDecisionPublic"];

/** One round as the chart draws it; null where the decision did not record the figure. */
export interface Round {
  id: string;
  t: number; // epoch ms
  instances: number; // booting + ready when it decided
  ready: number | null;
  booting: number | null;
  activePerGpu: number | null; // active requests (running + queued) per GPU over the window
  queueWaitS: number | null;
  gpuUtilization: number | null; // 0..1
  action: Decision["action"];
  delta: number;
  reason: string;
  result: Decision["result"];
}

function num(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

export function toRound(d: Decision): Round {
  const i = d.inputs ?? {};
  const active = num(i.active_requests);
  const gpus = num(i.gpus);
  return {
    id: d.id,
    t: new Date(d.at).getTime(),
    instances: d.instances,
    ready: num(i.ready),
    booting: num(i.booting),
    // As the policy divides it: booting instances' GPUs count as capacity, at least one GPU.
    activePerGpu: active === null ? null : active / Math.max(1, gpus ?? 0),
    queueWaitS: num(i.queue_wait_avg_s),
    gpuUtilization: num(i.gpu_utilization),
    action: d.action,
    delta: d.delta,
    reason: d.reason,
    result: d.result,
  };
}

/** A decision that changed the instance count (or asked to): the chart marks it. */
export function isScaling(r: Pick<Round, "action" | "delta">): boolean {
  return (r.action === "scale_up" || r.action === "scale_down") && r.delta !== 0;
}

/**
 * Decisions merged by id (a later copy wins: results are written after the decision), oldest
 * first, those before `fromMs` dropped.
 */
export function mergeRounds(known: Round[], incoming: Round[], fromMs: number): Round[] {
  const byId = new Map<string, Round>();
  for (const r of known) byId.set(r.id, r);
  for (const r of incoming) byId.set(r.id, r);
  return [...byId.values()].filter((r) => r.t >= fromMs).sort((a, b) => a.t - b.t);
}

export interface Pt {
  t: number;
  v: number | null;
}

/**
 * A step line: each value holds until the next point, the last until `tEnd`. Returns runs of
 * [t, v] vertices, broken where a value is missing.
 */
export function stepRuns(points: Pt[], tEnd: number): [number, number][][] {
  const runs: [number, number][][] = [];
  let run: [number, number][] = [];
  points.forEach((p, n) => {
    const next = n + 1 < points.length ? points[n + 1]!.t : Math.max(tEnd, p.t);
    if (p.v === null) {
      if (run.length) runs.push(run);
      run = [];
      return;
    }
    const prev = run[run.length - 1];
    if (prev && prev[1] !== p.v) run.push([p.t, p.v]); // the vertical step
    else if (!prev) run.push([p.t, p.v]);
    run.push([next, p.v]);
  });
  if (run.length) runs.push(run);
  // Collinear vertices of a level stretch add nothing: keep its two ends.
  return runs.map((r) => r.filter((p, n) => n === 0 || n === r.length - 1 || !(r[n - 1]![1] === p[1] && r[n + 1]![1] === p[1])));
}

/** The round in force at `t` (the last at or before it; the first when `t` is earlier). */
export function roundAt(rounds: Round[], t: number): Round | undefined {
  let lo = 0;
  let hi = rounds.length - 1;
  let found: Round | undefined = rounds[0];
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (rounds[mid]!.t <= t) {
      found = rounds[mid];
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}

/** "started 2", "drained 1, 1 refused", "held back by quota: …". */
export function describeResult(result: Decision["result"]): string {
  if (!result) return "";
  const len = (v: unknown) => (Array.isArray(v) ? v.length : 0);
  const parts: string[] = [];
  if ("started" in result) parts.push(`started ${len(result.started)}`);
  if ("drained" in result) parts.push(`drained ${len(result.drained)}`);
  if (len(result.refused)) parts.push(`${len(result.refused)} refused`);
  if (result.held_back_by_quota) parts.push(`held back by quota: ${String(result.held_back_by_quota)}`);
  return parts.join(", ");
}

/** What a scale marker says: "Scale up +2 at 14:03:05: below minimum (0 < 2); started 2". */
export function describeScaling(r: Round, time: (t: number) => string): string {
  const kind = r.delta > 0 ? "Scale up" : "Scale down";
  const change = r.delta > 0 ? `+${r.delta}` : `-${-r.delta}`;
  const result = describeResult(r.result);
  return `${kind} ${change} at ${time(r.t)} (${r.instances} instance${r.instances === 1 ? "" : "s"} then): ${r.reason}${result ? `; ${result}` : ""}`;
}
