import { useState } from "react";
import { client, typed } from "../api/client";
import { BarList } from "../components/LineChart";
import { DataTable } from "../components/DataTable";
import { Empty, Guard, Loading, PageHeader, Stat } from "../components/ui";
import { useInterval, useResource } from "../lib/hooks";
import { useProjects } from "../lib/projects";
import { downloadText, fmtMoney, fmtNumber, toCsv } from "../lib/format";
import {
  COST, COSTS_PATH, TOKENS_IN, TOKENS_OUT, USAGE_PATH, dayRange, fetchCosts, fetchUsage, isoDay, label, money, num,
  type CostDimension, type Row, type UsageDimension,
} from "../lib/usage";

const DIMENSIONS: { value: UsageDimension; label: string }[] = [
  { value: "day", label: "Day" },
  { value: "key", label: "API key" },
  { value: "model", label: "Model" },
  { value: "project", label: "Project" },
  { value: "deployment", label: "Deployment" },
];
const COST_DIMENSIONS: { value: CostDimension; label: string }[] = [
  { value: "day", label: "Day" },
  { value: "deployment", label: "Deployment" },
  { value: "project", label: "Project" },
  { value: "instance", label: "Instance" },
];
const ID_COLUMNS = ["project_id", "api_key_id", "deployment_id", "instance_id"];

/** A row without the columns that are empty in it (dimensions not grouped by). */
function compact(r: Row): Row {
  return Object.fromEntries(Object.entries(r).filter(([, v]) => v !== null && v !== undefined));
}

export function UsagePage() {
  const [start, setStart] = useState(isoDay(new Date(Date.now() - 29 * 86400e3)));
  const [end, setEnd] = useState(isoDay(new Date()));
  const [dim, setDim] = useState<UsageDimension>("day");
  const [costDim, setCostDim] = useState<CostDimension>("day");
  const usage = useResource(() => fetchUsage(dim, start, end), [dim, start, end]);
  const costs = useResource(() => fetchCosts(costDim, start, end), [costDim, start, end]);
  // A period that includes today keeps up with the gateway's request logs and running instances.
  useInterval(() => {
    void usage.reload();
    void costs.reload();
  }, end >= isoDay(new Date()) ? 10000 : null);

  const report = usage.data;
  const usageRows = (report?.rows ?? []) as Row[];
  const costRows = (costs.data?.rows ?? []) as Row[];
  const currency = costs.data?.totals[0]?.currency ?? "EUR";
  const range = new URLSearchParams(dayRange(start, end)).toString();
  // Ids are hidden, except the project's and deployment's when grouping by them (no name there).
  const keepId = (d: string) => ID_COLUMNS.filter((c) => c !== `${d}_id`);

  return (
    <>
      <PageHeader title="Usage and costs">
        {end >= isoDay(new Date()) && <span className="muted">Refreshes every 10 s</span>}
      </PageHeader>
      <div className="filters" role="group" aria-label="Period">
        <label>From <input type="date" aria-label="From date" value={start} max={end} onChange={(e) => e.target.value && setStart(e.target.value)} /></label>
        <label>To <input type="date" aria-label="To date" value={end} min={start} onChange={(e) => e.target.value && setEnd(e.target.value)} /></label>
      </div>
      <section className="stats" aria-label="Period totals">
        <Stat label="Requests" value={report ? fmtNumber(report.requests) : "—"} hint={report ? `${fmtNumber(report.errors)} failed` : undefined} />
        <Stat label="Input tokens" value={report ? fmtNumber(report.input_tokens) : "—"} />
        <Stat label="Output tokens" value={report ? fmtNumber(report.output_tokens) : "—"} />
        <Stat label="Server cost" value={costs.data ? money(costs.data.totals) : "—"}
          hint={costs.data ? `spending ${money(costs.data.spend_rate_per_hour)}/h now` : undefined} />
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
            <a className="button secondary" href={`${USAGE_PATH}/export?${range}`} download>Detailed CSV</a>
          </div>
        </header>
        <Guard res={usage} what="Usage" path={`GET ${USAGE_PATH}`}>
          {(r) => r.rows.length === 0 ? (
            <Empty>No requests in this period. Requests sent through the gateway appear here within seconds.</Empty>
          ) : (
            <>
              <BarList title={`Tokens (in + out) by ${dim}`} format={(v) => fmtNumber(v)}
                items={usageRows.map((x) => ({ label: label(x, dim), value: num(x, ...TOKENS_IN) + num(x, ...TOKENS_OUT) }))} />
              <DataTable rows={usageRows} label={`Usage by ${dim}`} hide={keepId(dim)} />
            </>
          )}
        </Guard>
      </section>

      <section className="card" aria-labelledby="costs-title">
        <header className="card-head">
          <h2 id="costs-title">Server costs</h2>
          <div className="button-row">
            <label>Group by{" "}
              <select aria-label="Group costs by" value={costDim} onChange={(e) => setCostDim(e.target.value as CostDimension)}>
                {COST_DIMENSIONS.map((d) => <option key={d.value} value={d.value}>{d.label}</option>)}
              </select>
            </label>
            <button type="button" className="secondary" disabled={!costRows.length}
              onClick={() => downloadText(`costs-by-${costDim}-${start}-${end}.csv`, toCsv(costRows.map(compact)))}>
              Export CSV
            </button>
          </div>
        </header>
        <Guard res={costs} what="Costs" path={`GET ${COSTS_PATH}`}>
          {(c) => c.rows.length === 0 ? (
            <Empty>No server time in this period.</Empty>
          ) : (
            <>
              <BarList title={`Cost by ${costDim}`} format={(v) => fmtMoney(v, currency)}
                items={costRows.map((x) => ({ label: label(x, costDim), value: num(x, ...COST) }))} />
              <DataTable rows={costRows} label={`Costs by ${costDim}`} hide={costDim === "instance" ? ["project_id", "deployment_id"] : ["project_id", "instance_id"]} />
            </>
          )}
        </Guard>
      </section>
      <Statements />
    </>
  );
}

function Statements() {
  const projects = useProjects();
  const [projectId, setProjectId] = useState("");
  const [month, setMonth] = useState(new Date().toISOString().slice(0, 7));
  const project = projectId || projects.data?.[0]?.id || "";
  const statement = useResource(
    async () => project
      ? typed(client.GET("/api/v1/projects/{project_id}/statements/{month}", { params: { path: { project_id: project, month } } }))
      : { ok: false as const, status: 0, message: "No project to show.", notAvailable: false },
    [project, month],
  );
  return (
    <section className="card" aria-labelledby="statement-title">
      <header className="card-head">
        <h2 id="statement-title">Monthly statement</h2>
        <div className="button-row">
          <label>Project{" "}
            <select aria-label="Statement project" value={project} onChange={(e) => setProjectId(e.target.value)}>
              {(projects.data ?? []).map((p) => <option key={p.id} value={p.id}>{p.name}</option>)}
            </select>
          </label>
          <label>Month <input type="month" aria-label="Statement month" value={month} onChange={(e) => e.target.value && setMonth(e.target.value)} /></label>
          {project && <a className="button secondary" href={`/api/v1/projects/${project}/statements/${month}/csv`} download>Download CSV</a>}
        </div>
      </header>
      {projects.loading ? <Loading what="Loading projects" /> : !project ? <Empty>You are not a member of any project yet.</Empty> : (
      <Guard res={statement} what="Statements" path="GET /api/v1/projects/{id}/statements/{month}">
        {(s) => (
          <>
            <p>Total for {s.project_name}, {s.month}: <strong>{money(s.totals)}</strong></p>
            <h3>Compute</h3>
            {s.compute.length === 0 ? <Empty>No server time this month.</Empty> : (
              <DataTable rows={s.compute as Row[]} label="Statement compute" hide={["project_id", "deployment_id", "instance_id", "day"]} />
            )}
            <h3>Usage</h3>
            {s.usage.length === 0 ? <Empty>No requests this month.</Empty> : (
              <DataTable rows={s.usage as Row[]} label="Statement usage" hide={ID_COLUMNS} />
            )}
          </>
        )}
      </Guard>
      )}
    </section>
  );
}
