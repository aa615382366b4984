import { useState } from "react";
import { BarList } from "../components/LineChart";
import { DataTable } from "../components/DataTable";
import { Empty, Guard, PageHeader, Stat } from "../components/ui";
import { useResource } from "../lib/hooks";
import { downloadText, fmtMoney, fmtNumber, toCsv } from "../lib/format";
import { COST, COSTS_PATH, TOKENS_IN, TOKENS_OUT, USAGE_PATH, dayRange, fetchCosts, fetchUsage, isoDay, label, num, spendRate, type Dimension, type Row, type UsageDimension } from "../lib/usage";

const DIMENSIONS: { value: UsageDimension; label: string }[] = [
  { value: "day", label: "Day" },
  { value: "key", label: "API key" },
  { value: "model", label: "Model" },
  { value: "project", label: "Project" },
  { value: "deployment", label: "Deployment" },
];
const COST_DIMENSIONS: { value: Dimension; label: string }[] = [
  { value: "day", label: "Day" },
  { value: "deployment", label: "Deployment" },
  { value: "project", label: "Project" },
];

export function UsagePage() {
  const [start, setStart] = useState(isoDay(new Date(Date.now() - 29 * 86400e3)));
  const [end, setEnd] = useState(isoDay(new Date()));
  const [dim, setDim] = useState<UsageDimension>("day");
  const [costDim, setCostDim] = useState<Dimension>("day");
  const usage = useResource(() => fetchUsage(dim, start, end), [dim, start, end]);
  const costs = useResource(() => fetchCosts(costDim, start, end), [costDim, start, end]);

  const report = usage.data;
  const usageRows = (report?.rows ?? []) as Row[];
  const exportHref = `${USAGE_PATH}/export?${new URLSearchParams(dayRange(start, end)).toString()}`;
  const currency = String((costs.data?.raw as { currency?: string } | undefined)?.currency ?? "EUR");
  const rate = spendRate(costs.data?.raw);

  return (
    <>
      <PageHeader title="Usage and costs" />
      <div className="filters" role="group" aria-label="Period">
        <label>From <input type="date" aria-label="From date" value={start} max={end} onChange={(e) => setStart(e.target.value)} /></label>
        <label>To <input type="date" aria-label="To date" value={end} min={start} onChange={(e) => setEnd(e.target.value)} /></label>
      </div>
      <section className="stats" aria-label="Period totals">
        <Stat label="Requests" value={report ? fmtNumber(report.requests) : "—"} hint={report ? `${fmtNumber(report.errors)} failed` : undefined} />
        <Stat label="Input tokens" value={report ? fmtNumber(report.input_tokens) : "—"} />
        <Stat label="Output tokens" value={report ? fmtNumber(report.output_tokens) : "—"} />
        <Stat label="Server cost" value={costs.data ? fmtMoney(costs.data.rows.reduce((s, r) => s + num(r, ...COST), 0), currency) : "—"}
          hint={rate !== null ? `now ${fmtMoney(rate, currency)}/h` : undefined} />
      </section>

      <section className="card" aria-labelledby="usage-title">
        <header className="card-head">
          <h2 id="usage-title">Tokens and requests</h2>
          <div className="button-row">
            <label>Group by{" "}
              <select aria-label="Group usage by" value={dim} onChange={(e) => setDim(e.target.value as UsageDimension)}>
                {DIMENSIONS.map((d) => <option key={d.value} value={d.value}>{d.label}</option>)}
              </select>
            </label>
            <button type="button" className="secondary" disabled={!usageRows.length}
              onClick={() => downloadText(`usage-by-${dim}-${start}-${end}.csv`, toCsv(usageRows.map(compact)))}>
              Export CSV
            </button>
            <a className="button secondary" href={exportHref} download>Full CSV (day × project × key × model)</a>
          </div>
        </header>
        <Guard res={usage} what="Usage" path={`GET ${USAGE_PATH}`}>
          {(r) => r.rows.length === 0 ? (
            <Empty>No requests in this period. Requests sent through the gateway appear here within seconds.</Empty>
          ) : (
            <>
              <BarList title={`Tokens (in + out) by ${dim}`} format={(v) => fmtNumber(v)}
                items={usageRows.map((r) => ({ label: label(r, dim), value: num(r, ...TOKENS_IN) + num(r, ...TOKENS_OUT) }))} />
              <DataTable rows={usageRows} label={`Usage by ${dim}`} hide={["project_id", "api_key_id", "deployment_id"].filter((c) => c !== `${dim}_id`)} />
            </>
          )}
        </Guard>
      </section>

      <section className="card" aria-labelledby="costs-title">
        <header className="card-head">
          <h2 id="costs-title">Server costs</h2>
          <div className="button-row">
            <label>Group by{" "}
              <select aria-label="Group costs by" value={costDim} onChange={(e) => setCostDim(e.target.value as Dimension)}>
                {COST_DIMENSIONS.map((d) => <option key={d.value} value={d.value}>{d.label}</option>)}
              </select>
            </label>
            <button type="button" className="secondary" disabled={!costs.data?.rows.length}
              onClick={() => downloadText(`costs-by-${costDim}-${start}-${end}.csv`, toCsv((costs.data?.rows ?? []).map(compact)))}>
              Export CSV
            </button>
          </div>
        </header>
        <Guard res={costs} what="Costs" path={`GET ${COSTS_PATH}`}>
          {({ rows }) => rows.length === 0 ? (
            <Empty>No server time in this period.</Empty>
          ) : (
            <>
              <BarList title={`Cost by ${costDim}`} format={(v) => fmtMoney(v, currency)}
                items={rows.map((r) => ({ label: label(r, costDim), value: num(r, ...COST) }))} />
              <DataTable rows={rows} label={`Costs by ${costDim}`} />
            </>
          )}
        </Guard>
      </section>
    </>
  );
}

/** A row without the columns that are empty in it (dimensions not grouped by). */
function compact(r: Row): Row {
  return Object.fromEntries(Object.entries(r).filter(([, v]) => v !== null && v !== undefined));
}
