// A small dependency-free SVG line chart: time on x, one or more series on y.
export interface Point {
  t: number; // epoch ms
  v: number;
}
export interface Series {
  label: string;
  points: Point[];
  color?: string;
}

const COLORS = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed"];

/** A round axis top at or above v: 1, 2, 2.5 or 5 times a power of ten. */
export function niceCeil(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p + 1e-12) return m * p;
  return 10 * p;
}

export function LineChart({
  title, series, unit = "", height = 160, format = (v: number) => v.toFixed(1), max,
}: { title: string; series: Series[]; unit?: string; height?: number; format?: (v: number) => string; max?: number }) {
  const width = 600;
  const pad = { l: 44, r: 12, t: 10, b: 22 };
  const all = series.flatMap((s) => s.points);
  const last = series.map((s) => s.points[s.points.length - 1]);
  const summary = series
    .map((s, i) => `${s.label}: ${last[i] ? `${format(last[i]!.v)}${unit}` : "no data"}`)
    .join(", ");
  if (all.length === 0) {
    return (
      <figure className="chart" aria-label={`${title}: no data yet`}>
        <figcaption>{title}</figcaption>
        <div className="chart-empty">No data yet for this period.</div>
      </figure>
    );
  }
  const t0 = Math.min(...all.map((p) => p.t));
  const t1 = Math.max(...all.map((p) => p.t), t0 + 1);
  const vMax = max ?? niceCeil(Math.max(...all.map((p) => p.v), 0) * 1.05);
  const x = (t: number) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
  const y = (v: number) => pad.t + (1 - v / vMax) * (height - pad.t - pad.b);
  const time = (t: number) => new Date(t).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  return (
    <figure className="chart">
      <figcaption>
        {title}
        <span className="chart-legend">
          {series.map((s, i) => (
            <span key={s.label}>
              <span className="swatch" style={{ background: s.color ?? COLORS[i % COLORS.length] }} />
              {s.label} {last[i] ? `${format(last[i]!.v)}${unit}` : "—"}
            </span>
          ))}
        </span>
      </figcaption>
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-label={`${title}. Latest ${summary}`} preserveAspectRatio="none">
        {[0, 0.5, 1].map((f) => (
          <g key={f}>
            <line x1={pad.l} x2={width - pad.r} y1={y(vMax * f)} y2={y(vMax * f)} className="grid" />
            <text x={pad.l - 4} y={y(vMax * f) + 4} textAnchor="end" className="axis">
              {Number((vMax * f).toPrecision(3))}
            </text>
          </g>
        ))}
        <text x={pad.l} y={height - 4} className="axis">{time(t0)}</text>
        <text x={width - pad.r} y={height - 4} textAnchor="end" className="axis">{time(t1)}</text>
        {series.map((s, i) => (
          <polyline
            key={s.label}
            fill="none"
            stroke={s.color ?? COLORS[i % COLORS.length]}
            strokeWidth={2}
            vectorEffect="non-scaling-stroke"
            points={s.points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ")}
          />
        ))}
      </svg>
    </figure>
  );
}

/** Horizontal bars for a few labelled values (usage by key, by model). */
export function BarList({ title, items, format = (v: number) => String(v) }: {
  title: string; items: { label: string; value: number }[]; format?: (v: number) => string;
}) {
  const max = Math.max(...items.map((i) => i.value), 1);
  return (
    <figure className="bars">
      <figcaption>{title}</figcaption>
      {items.length === 0 ? (
        <div className="chart-empty">No data yet for this period.</div>
      ) : (
        <ul>
          {items.map((i) => (
            <li key={i.label}>
              <span className="bar-label" title={i.label}>{i.label}</span>
              <span className="bar-track" aria-hidden="true">
                <span className="bar-fill" style={{ width: `${(i.value / max) * 100}%` }} />
              </span>
              <span className="bar-value">{format(i.value)}</span>
            </li>
          ))}
        </ul>
      )}
    </figure>
  );
}
