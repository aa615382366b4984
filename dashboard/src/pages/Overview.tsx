import { useMemo } from "react";
import { client, request, typed } from "../api/client";
import { LineChart, toSeries } from "../components/LineChart";
import { ErrorBox, Loading, NotAvailable, PageHeader, StateBadge, Stat, LiveIndicator } from "../components/ui";
import { useLiveEvents } from "../lib/events";
import { useInterval, useResource, useThrottled } from "../lib/hooks";
import { fmtMoney, fmtNumber, fmtPercent } from "../lib/format";
import { href } from "../lib/router";
import { COST, METRICS_PATH, fetchCosts, fetchUsage, isoDay, num, spendRate } from "../lib/usage";

const ORDER = ["provisioning", "booting", "ready", "draining", "terminating", "startup_failed", "provider_deleted", "terminated", "archived"];

export function OverviewPage() {
  const instances = useResource(() => typed(client.GET("/api/v1/instances", { params: { query: { limit: 500 } } })), []);
  const today = isoDay(new Date());
  const usage = useResource(() => fetchUsage("day", today, today), [today]);
  const costs = useResource(() => fetchCosts("day", today, today), [today]);
  const rate = useResource(() => request<unknown>("GET", METRICS_PATH, { query: { metric: "request_rate", range: "1h" } }), []);

  const refresh = useThrottled(() => void instances.reload(), 1000);
  const mode = useLiveEvents(() => refresh(), () => void instances.reload(), 5000);
  useInterval(() => {
    if (!usage.notAvailable) void usage.reload();
    if (!costs.notAvailable) void costs.reload();
  }, 15000);
  useInterval(() => void rate.reload(), rate.notAvailable ? null : 5000);

  const counts = useMemo(() => {
    const m = new Map<string, number>();
    for (const i of instances.data?.items ?? []) m.set(i.state, (m.get(i.state) ?? 0) + 1);
    return m;
  }, [instances.data]);

  const day = usage.data;
  const requests = day?.requests ?? 0;
  const errors = day?.errors ?? 0;
  const tokensIn = day?.input_tokens ?? 0;
  const tokensOut = day?.output_tokens ?? 0;
  const spend = spendRate(costs.data?.raw);
  const costToday = (costs.data?.rows ?? []).reduce((s, r) => s + num(r, ...COST), 0);
  const currency = String((costs.data?.raw as { currency?: string } | undefined)?.currency ?? "EUR");
  const usageValue = (v: string) => (usage.loading ? "…" : usage.notAvailable || usage.error ? "—" : v);

  return (
    <>
      <PageHeader title="Overview">
        <LiveIndicator mode={mode} />
      </PageHeader>
      <section aria-labelledby="states-title" className="card">
        <h2 id="states-title">Instances by state</h2>
        {instances.loading ? <Loading what="Counting instances" /> : instances.error ? <ErrorBox message={instances.error} /> : counts.size === 0 ? (
          <p className="empty">No instances yet. <a href={href("/deployments")}>Provision one from a deployment.</a></p>
        ) : (
          <ul className="state-counts">
            {ORDER.filter((s) => counts.has(s)).map((s) => (
              <li key={s}>
                <a href={href("/instances")} aria-label={`${counts.get(s)} ${s.replace("_", " ")}`}>
                  <span className="count">{counts.get(s)}</span> <StateBadge state={s} />
                </a>
              </li>
            ))}
          </ul>
        )}
      </section>
      <section className="stats" aria-label="Today">
        <Stat label="Current spend rate" value={costs.loading ? "…" : spend !== null ? `${fmtMoney(spend, currency)}/h` : "—"}
          hint={costs.notAvailable ? "costs not available" : costs.error ? costs.error : `${fmtMoney(costToday, currency)} so far today`} />
        <Stat label="Requests today" value={usageValue(fmtNumber(requests))} hint={usage.notAvailable ? "usage not available" : usage.error ?? undefined} />
        <Stat label="Tokens today" value={usageValue(fmtNumber(tokensIn + tokensOut))} hint={day ? `${fmtNumber(tokensIn)} in · ${fmtNumber(tokensOut)} out` : undefined} />
        <Stat label="Error rate today" value={usageValue(requests ? fmtPercent(errors / requests) : "—")} hint={requests ? `${fmtNumber(errors)} failed` : "no requests yet"} />
      </section>
      <section className="card" aria-labelledby="rate-title">
        <h2 id="rate-title">Request rate (last hour, live)</h2>
        {rate.loading ? <Loading what="Loading request rate" /> : rate.notAvailable ? (
          <NotAvailable what="The request-rate metric" path={`GET ${METRICS_PATH}`} />
        ) : rate.error ? <ErrorBox message={rate.error} /> : (
          <LineChart title="Requests per second" unit=" req/s" series={toSeries(rate.data, ["value", "v", "request_rate", "rps", "requests_per_s"], "all deployments")} format={(v) => v.toFixed(2)} />
        )}
      </section>
    </>
  );
}
