// A deployment's autoscaling over the last hour, drawn from its stored decisions: instances
// (booting + ready, and ready) and load (active requests per GPU) as the autoscaler read them each
// round, and a marker on every decision that scaled, its reason on hover or focus. Hand-written
// SVG like LineChart; it re-reads the decisions when the page says new ones arrived.
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState, type MouseEvent } from "react";
import { client, typed } from "../api/client";
import { useInterval, useThrottled } from "../lib/hooks";
import { fmtNumber, fmtPercent } from "../lib/format";
import { describeScaling, isScaling, mergeRounds, roundAt, stepRuns, toRound, type Round } from "../lib/scaling";
import { niceCeil } from "./LineChart";

const HOUR_MS = 3600_000;
const COLORS = { instances: "#2563eb", ready: "#16a34a", load: "#7c3aed", threshold: "#a16207", up: "#15803d", down: "#c2410c" };
const PAD = { l: 40, r: 12 };
const INST = { t: 24, h: 112 }; // instances panel, below the strip of scale markers
const LOAD = { t: 162, h: 62 }; // load panel
const HEIGHT = 248;

function clock(t: number, withSeconds: boolean): string {
  return new Date(t).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: withSeconds ? "2-digit" : undefined });
}

/** Decisions of the last hour, kept up to date: new rounds appended, scale decisions re-read
 * whole (their results are written after them). */
function useRounds(deploymentId: string, version: number) {
  const [rounds, setRounds] = useState<Round[]>([]);
  const [changes, setChanges] = useState<Round[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [loaded, setLoaded] = useState(false);
  const latest = useRef<Round[]>([]);
  const busy = useRef(false);
  const again = useRef(false);

  const load = useCallback(async (): Promise<void> => {
    if (busy.current) {
      again.current = true; // read once more when this one is done: nothing new is missed
      return;
    }
    busy.current = true;
    try {
      const from = Date.now() - HOUR_MS;
      const known = latest.current;
      const since = known.length ? new Date(known[known.length - 1]!.t).toISOString() : new Date(from).toISOString();
      const path = { deployment_id: deploymentId };
      const [recent, scaled] = await Promise.all([
        typed(client.GET("/api/v1/deployments/{deployment_id}/decisions", { params: { path, query: { since, limit: 2000 } } })),
        typed(client.GET("/api/v1/deployments/{deployment_id}/decisions", {
          params: { path, query: { since: new Date(from).toISOString(), changes_only: true, limit: 500 } },
        })),
      ]);
      if (!recent.ok || !scaled.ok) {
        setError((!recent.ok ? recent.message : !scaled.ok ? scaled.message : null) ?? "failed");
        return;
      }
      const merged = mergeRounds(known, recent.data.map(toRound), from);
      latest.current = merged;
      setRounds(merged);
      setChanges(scaled.data.map(toRound).filter(isScaling).sort((a, b) => a.t - b.t));
      setError(null);
      setLoaded(true);
    } finally {
      busy.current = false;
      if (again.current) {
        again.current = false;
        void load();
      }
    }
  }, [deploymentId]);

  const reload = useThrottled(() => void load(), 1500);
  useEffect(() => {
    latest.current = [];
    setRounds([]);
    setChanges([]);
    setLoaded(false);
    void load();
  }, [load]);
  useEffect(() => {
    if (version > 0) reload();
  }, [version, reload]);
  useInterval(reload, 30_000); // a safety net while the event stream is down
  return { rounds, changes, error, loaded };
}

export function ScalingChart({ deploymentId, name, version, upPerGpu, enabled }: {
  deploymentId: string; name: string; version: number; upPerGpu?: number; enabled: boolean;
}) {
  const { rounds, changes, error, loaded } = useRounds(deploymentId, version);
  const box = useRef<HTMLDivElement>(null);
  const [width, setWidth] = useState(600);
  const [hover, setHover] = useState<{ round: Round; marker: boolean } | null>(null);

  useLayoutEffect(() => {
    const el = box.current;
    if (!el) return;
    const measure = () => setWidth(Math.max(240, Math.round(el.clientWidth)));
    measure();
    if (typeof ResizeObserver === "undefined") return;
    const ro = new ResizeObserver(measure);
    ro.observe(el);
    return () => ro.disconnect();
  }, [loaded, rounds.length > 0]);

  const scale = useMemo(() => {
    const all = [...rounds, ...changes];
    if (all.length === 0) return null;
    const t0 = Math.min(...all.map((r) => r.t));
    // The last round's figures hold for one round period after it (then the next one comes).
    const n = rounds.length;
    const period = n >= 2 ? rounds[n - 1]!.t - rounds[n - 2]!.t : 1000;
    const t1 = Math.max(...all.map((r) => r.t), t0) + Math.max(period, 1000);
    const peak = Math.max(1, ...all.map((r) => r.instances));
    const instMax = peak <= 4 ? peak + 1 : niceCeil(peak * 1.1);
    const loads = rounds.map((r) => r.activePerGpu ?? 0);
    const loadMax = niceCeil(Math.max(...loads, upPerGpu ?? 0, 1) * 1.05);
    const x = (t: number) => PAD.l + ((t - t0) / (t1 - t0)) * (width - PAD.l - PAD.r);
    return { t0, t1, instMax, loadMax, x };
  }, [rounds, changes, width, upPerGpu]);

  const title = `Instances and load of ${name}`;
  if (!scale) {
    if (!enabled) return null; // autoscaling off and nothing decided lately: nothing to draw
    if (error) return <p className="cell-error">Could not load the scaling decisions: {error}</p>;
    return (
      <figure className="chart scaling-chart" aria-label={`${title}: no decisions yet`}>
        <figcaption>{title}, last hour</figcaption>
        <div className="chart-empty">{loaded ? "No decision in the last hour yet: the autoscaler's rounds appear here as it decides." : "Loading…"}</div>
      </figure>
    );
  }

  const { t0, t1, instMax, loadMax, x } = scale;
  const yInst = (v: number) => INST.t + (1 - v / instMax) * INST.h;
  const yLoad = (v: number) => LOAD.t + (1 - v / loadMax) * LOAD.h;
  const seconds = t1 - t0 < 15 * 60_000;
  const time = (t: number) => clock(t, true);
  const line = (run: [number, number][], y: (v: number) => number) => run.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  const instRuns = stepRuns(rounds.map((r) => ({ t: r.t, v: r.instances })), t1);
  const readyRuns = stepRuns(rounds.map((r) => ({ t: r.t, v: r.ready })), t1);
  const loadRuns = stepRuns(rounds.map((r) => ({ t: r.t, v: r.activePerGpu })), t1);
  const instTicks = instMax <= 6 ? Array.from({ length: instMax + 1 }, (_, n) => n) : [0, instMax / 2, instMax];
  const ups = changes.filter((r) => r.delta > 0).length;
  const downs = changes.length - ups;
  const last = rounds[rounds.length - 1];
  const summary = [
    last ? `${last.instances} instance${last.instances === 1 ? "" : "s"} at the last round${last.ready !== null ? ` (${last.ready} ready)` : ""}` : null,
    last?.activePerGpu != null ? `${fmtNumber(last.activePerGpu, 1)} active requests per GPU` : null,
    `${ups} scale-up${ups === 1 ? "" : "s"}, ${downs} scale-down${downs === 1 ? "" : "s"}`,
  ].filter(Boolean).join("; ");
  const since = t0 > Date.now() - HOUR_MS + 60_000 ? `since ${clock(t0, seconds)}` : "last hour";

  const onMove = (e: MouseEvent<SVGSVGElement>) => {
    const rect = e.currentTarget.getBoundingClientRect();
    const px = ((e.clientX - rect.left) / rect.width) * width;
    const t = t0 + ((px - PAD.l) / (width - PAD.l - PAD.r)) * (t1 - t0);
    const round = roundAt(rounds, t);
    setHover(round ? { round, marker: false } : null);
  };
  const shown = hover?.round;

  return (
    <figure className="chart scaling-chart" data-deployment-id={deploymentId}>
      <figcaption>
        {title}, {since}
        <span className="chart-legend">
          <span><span className="swatch" style={{ background: COLORS.instances }} />Instances (booting + ready) {last ? last.instances : "—"}</span>
          <span><span className="swatch" style={{ background: COLORS.ready }} />Ready {last?.ready ?? "—"}</span>
          <span><span className="swatch" style={{ background: COLORS.load }} />Active requests per GPU {last?.activePerGpu != null ? fmtNumber(last.activePerGpu, 1) : "—"}</span>
          <span><span className="marker-glyph" style={{ color: COLORS.up }} aria-hidden="true">▲</span>{ups} scale-up{ups === 1 ? "" : "s"}</span>
          <span><span className="marker-glyph" style={{ color: COLORS.down }} aria-hidden="true">▼</span>{downs} scale-down{downs === 1 ? "" : "s"}</span>
        </span>
      </figcaption>
      <div className="scaling-plot" ref={box}>
        <svg viewBox={`0 0 ${width} ${HEIGHT}`} width={width} height={HEIGHT} role="img"
          aria-label={`${title}, ${since}: ${summary}`} onMouseMove={onMove} onMouseLeave={() => setHover(null)}>
          <g data-panel="instances">
            {instTicks.map((v) => (
              <g key={v} data-tick={v}>
                <line x1={PAD.l} x2={width - PAD.r} y1={yInst(v)} y2={yInst(v)} className="grid" />
                <text x={PAD.l - 6} y={yInst(v) + 4} textAnchor="end" className="axis">{Number(v.toPrecision(3))}</text>
              </g>
            ))}
            {readyRuns.map((run, n) => (
              <polyline key={`r${n}`} data-series="ready" fill="none" stroke={COLORS.ready} strokeWidth={2} strokeDasharray="5 3" points={line(run, yInst)} />
            ))}
            {instRuns.map((run, n) => (
              <polyline key={`i${n}`} data-series="instances" fill="none" stroke={COLORS.instances} strokeWidth={2} points={line(run, yInst)} />
            ))}
          </g>
          <text x={PAD.l} y={LOAD.t - 8} className="axis">Active requests per GPU{upPerGpu !== undefined ? ` (dashed: scale-up level ${fmtNumber(upPerGpu, 1)})` : ""}</text>
          <g data-panel="load">
            {[0, loadMax].map((v) => (
              <g key={v}>
                <line x1={PAD.l} x2={width - PAD.r} y1={yLoad(v)} y2={yLoad(v)} className="grid" />
                <text x={PAD.l - 6} y={yLoad(v) + 4} textAnchor="end" className="axis">{Number(v.toPrecision(3))}</text>
              </g>
            ))}
            {upPerGpu !== undefined && (
              <line x1={PAD.l} x2={width - PAD.r} y1={yLoad(upPerGpu)} y2={yLoad(upPerGpu)} stroke={COLORS.threshold} strokeDasharray="4 4" strokeWidth={1} />
            )}
            {loadRuns.map((run, n) => (
              <polyline key={`l${n}`} data-series="load" fill="none" stroke={COLORS.load} strokeWidth={2} points={line(run, yLoad)} />
            ))}
          </g>
          {changes.map((r) => (
            <line key={r.id} x1={x(r.t)} x2={x(r.t)} y1={INST.t - 6} y2={LOAD.t + LOAD.h} stroke={r.delta > 0 ? COLORS.up : COLORS.down} strokeWidth={1.5} strokeDasharray="2 2" />
          ))}
          {shown && !hover?.marker && (
            <line x1={x(shown.t)} x2={x(shown.t)} y1={INST.t} y2={LOAD.t + LOAD.h} stroke="#94a3b8" strokeWidth={1} />
          )}
          <text x={PAD.l} y={HEIGHT - 4} className="axis">{clock(t0, seconds)}</text>
          <text x={width - PAD.r} y={HEIGHT - 4} textAnchor="end" className="axis">{clock(t1, seconds)}</text>
        </svg>
        <ul className="scale-markers" aria-label={`Scale decisions of ${name}`}>
          {changes.map((r) => {
            const text = describeScaling(r, time);
            return (
              <li key={r.id} style={{ left: `${x(r.t)}px` }}>
                <button type="button" className={`scale-marker ${r.delta > 0 ? "up" : "down"}`} data-action={r.action} data-delta={r.delta}
                  aria-label={text} title={text}
                  onMouseEnter={() => setHover({ round: r, marker: true })} onMouseLeave={() => setHover(null)}
                  onFocus={() => setHover({ round: r, marker: true })} onBlur={() => setHover(null)}>
                  {r.delta > 0 ? "▲" : "▼"}
                </button>
              </li>
            );
          })}
        </ul>
      </div>
      <p className="chart-readout" data-testid="scaling-readout">
        {shown ? (hover?.marker ? describeScaling(shown, time) : describeRound(shown, time)) : "Point at the chart for a round's figures, or at a marker for why it scaled."}
      </p>
    </figure>
  );
}

function describeRound(r: Round, time: (t: number) => string): string {
  const parts = [
    `${r.instances} instance${r.instances === 1 ? "" : "s"}${r.ready !== null ? ` (${r.ready} ready, ${r.booting ?? 0} booting)` : ""}`,
    r.activePerGpu !== null ? `${fmtNumber(r.activePerGpu, 1)} active requests per GPU` : null,
    r.queueWaitS !== null ? `queue wait ${fmtNumber(r.queueWaitS, 2)} s` : null,
    r.gpuUtilization !== null ? `GPU ${fmtPercent(r.gpuUtilization, 0)}` : null,
  ].filter(Boolean);
  return `${time(r.t)}: ${parts.join(", ")} — ${r.reason}`;
}
