import { useState, type FormEvent } from "react";
import { client, typed, type Schemas } from "../api/client";
import { Empty, ErrorBox, Guard, Notice, PageHeader } from "../components/ui";
import { useResource } from "../lib/hooks";
import { useProjects } from "../lib/projects";
import { fmtAgo, fmtNumber, fmtTime } from "../lib/format";

type Machine = Schemas["MachinePublic"];
type EnrolmentCreated = Schemas["EnrolmentCreated"];

const PATH = "/api/v1/machines";
const SHARED = "";

/** "mon, tue 20:00–08:00" per slot; no slots: always shared. */
function slotsText(m: Machine): string {
  const slots = m.sharing.slots ?? [];
  if (slots.length === 0) return "always";
  return slots
    .map((s) => {
      const days = Array.isArray(s.days) ? (s.days as unknown[]).join(", ") : "every day";
      return `${days} ${String(s.start)}–${String(s.end)}`;
    })
    .join("; ");
}

function connectionBadge(m: Machine) {
  if (m.revoked_at) return <span className="badge badge-muted">Revoked</span>;
  if (m.connected) return <span className="badge badge-ok">Connected</span>;
  return <span className="badge badge-bad">Disconnected</span>;
}

export function MachinesPage({ isAdmin }: { isAdmin: boolean }) {
  const projects = useProjects();
  const machines = useResource(() => typed(client.GET("/api/v1/machines")), []);
  const [created, setCreated] = useState<EnrolmentCreated | null>(null);
  const [notice, setNotice] = useState<{ tone: "ok" | "bad"; text: string } | null>(null);
  const [name, setName] = useState("");
  const [projectId, setProjectId] = useState<string | null>(null);
  const [formError, setFormError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  // admins may enrol a machine shared by all projects; members enrol for one of theirs
  const project = projectId ?? (isAdmin ? SHARED : projects.data?.[0]?.id ?? "");
  const projectName = (id: string | null | undefined) =>
    id ? projects.data?.find((p) => p.id === id)?.name ?? id.slice(0, 8) : "shared";

  const enrol = async (e: FormEvent) => {
    e.preventDefault();
    setFormError(null);
    if (!isAdmin && !project) {
      setFormError("Choose a project first.");
      return;
    }
    setBusy(true);
    const r = await typed(client.POST("/api/v1/machines/enrolments", {
      body: { name: name.trim(), project_id: project || null },
    }));
    setBusy(false);
    if (!r.ok) {
      setFormError(r.message);
      return;
    }
    setCreated(r.data);
    setName("");
  };

  const revoke = async (m: Machine) => {
    if (!window.confirm(`Revoke the machine "${m.name}"? Its tunnel is cut within seconds and it must be enrolled again.`)) return;
    const r = await typed(client.POST("/api/v1/machines/{machine_id}/revoke", { params: { path: { machine_id: m.id } } }));
    setNotice(r.ok ? { tone: "ok", text: `Machine "${m.name}" revoked.` } : { tone: "bad", text: r.message });
    void machines.reload();
  };

  return (
    <>
      <PageHeader title="Machines">
        <button type="button" className="secondary" onClick={() => void machines.reload()}>Refresh</button>
      </PageHeader>
      <p className="muted">Machines that joined through the outbound tunnel: their owner decides when (time slots) and how much (quotas) the cluster may use them.</p>
      {created && (
        <section className="secret card" aria-labelledby="enrolment-title" role="status">
          <h2 id="enrolment-title">Enrolment token created</h2>
          <p>Run this on the machine before {fmtTime(created.expires_at)}: <strong>it will not be shown again</strong> and works once.</p>
          <div className="secret-row">
            <input aria-label="Join command" readOnly value={created.command} className="mono" onFocus={(e) => e.target.select()} />
            <button type="button" className="secondary" onClick={() => { setCreated(null); void machines.reload(); }}>I have saved it</button>
          </div>
        </section>
      )}
      <form className="card form-grid" onSubmit={enrol} aria-labelledby="new-machine-title">
        <h2 id="new-machine-title">Enrol a machine</h2>
        <label htmlFor="machine-name">Name</label>
        <input id="machine-name" required maxLength={120} value={name} onChange={(e) => setName(e.target.value)} placeholder="e.g. desk-gpu" />
        <label htmlFor="machine-project">Project</label>
        <select id="machine-project" value={project} onChange={(e) => setProjectId(e.target.value)}>
          {isAdmin && <option value={SHARED}>Shared by all projects</option>}
          {(projects.data ?? []).map((p) => <option key={p.id} value={p.id}>{p.name}</option>)}
        </select>
        {formError && <div className="error-box full" role="alert">{formError}</div>}
        <div className="full"><button type="submit" disabled={busy}>{busy ? "Creating…" : "Create enrolment token"}</button></div>
      </form>
      {notice && <Notice tone={notice.tone} onClose={() => setNotice(null)}>{notice.text}</Notice>}
      <Guard res={machines} what="Machines" path={`GET ${PATH}`}>
        {(list) => list.length === 0 ? (
          <Empty>No machine has joined yet. Create an enrolment token above and run its command on the machine.</Empty>
        ) : (
          <div className="table-wrap">
            <table aria-label="Machines">
              <thead>
                <tr>
                  <th scope="col">Name</th><th scope="col">Owner</th><th scope="col">Project</th><th scope="col">GPUs</th>
                  <th scope="col">Time slots</th><th scope="col">Quota use today</th><th scope="col">Availability</th>
                  <th scope="col">Connection</th><th scope="col"><span className="sr-only">Actions</span></th>
                </tr>
              </thead>
              <tbody>
                {list.map((m) => (
                  <tr key={m.id} data-machine-id={m.id}>
                    <td>{m.name}{m.claimed_by && <><br /><a href={`#/instances/${m.claimed_by}`}>serving an instance</a></>}</td>
                    <td>{m.owner_email ?? m.owner_id.slice(0, 8)}</td>
                    <td>{projectName(m.project_id)}</td>
                    <td>{fmtNumber(m.gpu_count)}{m.sharing.quota_gpus != null && ` (lends ${fmtNumber(m.sharing.quota_gpus)})`}</td>
                    <td>{slotsText(m)}<br /><span className="muted">{m.sharing.timezone}</span></td>
                    <td>
                      {fmtNumber(m.gpu_hours_today, 2)} GPU-h
                      {m.sharing.quota_gpu_hours_per_day != null ? ` of ${fmtNumber(m.sharing.quota_gpu_hours_per_day, 1)}` : " (no daily quota)"}
                    </td>
                    <td>
                      {m.available_now ? <span className="badge badge-ok">Available</span> : <span className="badge badge-warn">Not available</span>}
                      <br />{m.availability}
                      {m.drain_by && <><br />drain by <span title={m.drain_by}>{fmtTime(m.drain_by)}</span></>}
                    </td>
                    <td>{connectionBadge(m)}<br /><span title={m.last_seen_at ?? ""}>seen {fmtAgo(m.last_seen_at)}</span></td>
                    <td className="row-actions">
                      {!m.revoked_at && (
                        <button type="button" className="danger" aria-label={`Revoke machine ${m.name}`} onClick={() => revoke(m)}>Revoke</button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Guard>
      {projects.error && !projects.data && <ErrorBox message={`Projects: ${projects.error}`} />}
    </>
  );
}
