import { client, typed } from "../api/client";
import { LineChart } from "../components/LineChart";
import { QuotaCard } from "../components/Quotas";
import { pointsOf, type Point } from "../lib/metrics";
import { ErrorBox, Guard, LiveIndicator, Loading, NotAvailable, PageHeader, StateBadge, Stat } from "../components/ui";
import { useLiveEvents } from "../lib/events";
import { useInterval, useResource, useThrottled } from "../lib/hooks";
import { fmtNumber, fmtPercent } from "../lib/format";
import { href } from "../lib/router";
import { money } from "../lib/usage";

const ORDER = ["provisioning", "booting", "ready", "draining", "terminating", "startup_failed", "provider_deleted", "terminated", "archived"];


export function OverviewPage() {
  const overview = useResource(() => typed(client.GET("/api/v1/overview")), []);
  const metrics = useResource(() => typed(client.GET("/api/v1/metrics/requests", { params: { query: { step_s: 30 } } })), []);

  const refresh = useThrottled(() => void overview.reload(), 1000);
  const mode = useLiveEvents(() => refresh(), () => void overview.reload(), 5000);
  useInterval(() => void overview.reload(), 15000); // traffic and costs are not pushed as events
  useInterval(() => void metrics.reload(), 5000);

  const o = overview.data;
  const counts = ORDER.map((s) => [s, (o?.instances_by_state as Record<string, number> | undefined)?.[s] ?? 0] as const).filter(([, n]) => n > 0);
  const points = metrics.data?.points as Point[] | undefined;

  return (
    <>
      <PageHeader title="Overview">
        <LiveIndicator mode={mode} />
      </PageHeader>
      <Guard res={overview} what="The overview" path="GET /api/v1/overview">
        {(o) => (
          <>
            <section aria-labelledby="states-title" className="card">
              <h2 id="states-title">Instances by state</h2>
              {counts.length === 0 ? (
                <p className="empty">No instances yet. <a href={href("/deployments")}>Provision one from a deployment.</a></p>
              ) : (
                <ul className="state-counts">
                  {counts.map(([s, n]) => (
                    <li key={s}>
                      <a href={href("/instances")} aria-label={`${n} ${s.replace("_", " ")}`}>
                        <span className="count">{n}</span> <StateBadge state={s} />
                      </a>
                    </li>
                  ))}
                </ul>
              )}
            </section>
            <section className="stats" aria-label="Today">
              <Stat label="Current spend rate" value={`${money(o.spend_rate_per_hour, 2)}/h`} hint={`${money(o.today.cost)} so far today`} />
              <Stat label="Requests today" value={fmtNumber(o.today.requests)} hint={`since 00:00 UTC`} />
              <Stat label="Tokens today" value={fmtNumber(o.today.input_tokens + o.today.output_tokens)}
                hint={`${fmtNumber(o.today.input_tokens)} in · ${fmtNumber(o.today.output_tokens)} out`} />
              <Stat label="Error rate today" value={o.today.requests ? fmtPercent(o.today.error_rate) : "—"}
                hint={o.today.requests ? `${fmtNumber(o.today.errors)} failed` : "no requests yet"} />
            </section>
          </>
        )}
      </Guard>
      <QuotaCard />
      <section className="card" aria-labelledby="rate-title">
        <h2 id="rate-title">Traffic (last hour, live)</h2>
        {metrics.loading ? <Loading what="Loading request metrics" /> : metrics.notAvailable ? (
          <NotAvailable what="Request metrics" path="GET /api/v1/metrics/requests" />
        ) : metrics.error && !metrics.data ? <ErrorBox message={metrics.error} onRetry={() => void metrics.reload()} /> : (
          <div className="grid-2">
            <LineChart title="Request rate" unit=" req/s" series={pointsOf(points, "request_rate_per_s", "requests")} format={(v) => v.toFixed(2)} />
            <LineChart title="Latency" unit=" ms" series={[...pointsOf(points, "ttft_p95_ms", "TTFT p95"), ...pointsOf(points, "latency_p95_ms", "latency p95")]} format={(v) => v.toFixed(0)} />
            <LineChart title="Output tokens per second" unit=" tok/s" series={pointsOf(points, "output_tokens_per_s", "tokens")} format={(v) => v.toFixed(1)} />
            <LineChart title="Error rate" unit=" %" series={pointsOf(points, "error_rate", "errors").map((s) => ({ ...s, points: s.points.map((p) => ({ ...p, v: p.v * 100 })) }))} format={(v) => v.toFixed(1)} max={100} />
          </div>
        )}
      </section>
    </>
  );
}
