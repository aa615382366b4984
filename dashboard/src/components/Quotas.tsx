// Each project's use against its quota (GET /api/v1/projects/{id}/quota): instances and GPUs
// at once, this month's spend against the budget. Admins set quotas through the API.
import { useEffect, useState } from "react";
import { client, typed, type Schemas } from "../api/client";
import { useProjects } from "../lib/projects";
import { fmtNumber } from "../lib/format";
import { money } from "../lib/usage";

type Quota = Schemas["QuotaPublic"];

function against(used: number, limit: number | null | undefined): string {
  return limit === null || limit === undefined ? `${fmtNumber(used)} (no limit)` : `${fmtNumber(used)} of ${fmtNumber(limit)}`;
}

function budget(q: Quota): string {
  const parts: string[] = [];
  if (q.limits.monthly_budget != null) parts.push(`${money(q.use.month_cost)} of ${money([{ currency: q.limits.budget_currency, amount: q.limits.monthly_budget }])}`);
  if (q.limits.monthly_gpu_hours != null) parts.push(`${fmtNumber(q.use.month_gpu_hours, 1)} of ${fmtNumber(q.limits.monthly_gpu_hours)} GPU-hours`);
  return parts.length ? parts.join(" · ") : `${money(q.use.month_cost)} (no budget)`;
}

export function QuotaCard() {
  const projects = useProjects();
  const [quotas, setQuotas] = useState<Record<string, Quota>>({});
  useEffect(() => {
    for (const p of projects.data ?? []) {
      void typed(client.GET("/api/v1/projects/{project_id}/quota", { params: { path: { project_id: p.id } } })).then((r) => {
        if (r.ok) setQuotas((all) => ({ ...all, [p.id]: r.data }));
      });
    }
  }, [projects.data]);
  const rows = (projects.data ?? []).filter((p) => quotas[p.id]);
  if (rows.length === 0) return null;
  return (
    <section className="card" aria-labelledby="quota-title">
      <h2 id="quota-title">Quotas this month</h2>
      <table>
        <thead>
          <tr><th>Project</th><th>Instances</th><th>GPUs</th><th>Spend</th><th>Budget</th></tr>
        </thead>
        <tbody>
          {rows.map((p) => {
            const q = quotas[p.id];
            const used = q.use.budget_used_percent;
            return (
              <tr key={p.id}>
                <td>{p.name}</td>
                <td>{against(q.use.instances, q.limits.max_instances)}</td>
                <td>{against(q.use.gpus, q.limits.max_gpus)}</td>
                <td>{budget(q)}</td>
                <td>
                  {used == null ? "—" : `${used.toFixed(0)} %`}{" "}
                  {q.use.stopped ? <span className="badge badge-bad">spent: no new instances</span>
                    : q.use.warning ? <span className="badge badge-warn">near the limit</span> : null}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </section>
  );
}
