import { useMemo, useState } from "react";
import { client, typed, type Deployment, type InstanceState } from "../api/client";
import { ErrorBox, Empty, LiveIndicator, Loading, Notice, PageHeader, ProgressBar, StateBadge } from "../components/ui";
import { useLiveEvents } from "../lib/events";
import { useResource, useThrottled } from "../lib/hooks";
import { fmtAgo, humanize, shortId } from "../lib/format";
import { href } from "../lib/router";
import { ACTIVE_STATES, drainInstance, terminateInstance } from "../lib/actions";

const STATES: InstanceState[] = [
  "provisioning", "booting", "ready", "draining", "terminating", "terminated", "archived", "startup_failed", "provider_deleted",
];
const PAGE = 50;

export function InstancesPage() {
  const [state, setState] = useState<InstanceState | "">("");
  const [deploymentId, setDeploymentId] = useState("");
  const [provider, setProvider] = useState("");
  const [offset, setOffset] = useState(0);
  const [notice, setNotice] = useState<{ tone: "ok" | "bad"; text: string } | null>(null);

  const deployments = useResource(() => typed(client.GET("/api/v1/deployments")), []);
  const depName = useMemo(() => {
    const m = new Map<string, Deployment>();
    (deployments.data ?? []).forEach((d) => m.set(d.id, d));
    return m;
  }, [deployments.data]);

  const list = useResource(
    () => typed(client.GET("/api/v1/instances", {
      params: { query: { state: state || undefined, deployment_id: deploymentId || undefined, provider: provider || undefined, limit: PAGE, offset } },
    })),
    [state, deploymentId, provider, offset],
  );
  const refresh = useThrottled(() => void list.reload(), 500);
  const mode = useLiveEvents(() => refresh(), () => void list.reload(), 3000);

  const act = async (what: "drain" | "terminate", id: string) => {
    if (what === "terminate" && !window.confirm(`Terminate instance ${shortId(id)}? Its server and volumes are deleted.`)) return;
    const r = what === "drain" ? await drainInstance(id) : await terminateInstance(id);
    setNotice(r.ok ? { tone: "ok", text: `${humanize(what)} requested for ${shortId(id)}.` } : { tone: "bad", text: r.message });
    void list.reload();
  };

  return (
    <>
      <PageHeader title="Instances">
        <LiveIndicator mode={mode} />
      </PageHeader>
      <div className="filters" role="search" aria-label="Filter instances">
        <label>
          State
          <select aria-label="Filter by state" value={state} onChange={(e) => { setState(e.target.value as InstanceState | ""); setOffset(0); }}>
            <option value="">All states</option>
            {STATES.map((s) => <option key={s} value={s}>{humanize(s)}</option>)}
          </select>
        </label>
        <label>
          Deployment
          <select aria-label="Filter by deployment" value={deploymentId} onChange={(e) => { setDeploymentId(e.target.value); setOffset(0); }}>
            <option value="">All deployments</option>
            {(deployments.data ?? []).map((d) => <option key={d.id} value={d.id}>{d.name}</option>)}
          </select>
        </label>
        <label>
          Provider
          <select aria-label="Filter by provider" value={provider} onChange={(e) => { setProvider(e.target.value); setOffset(0); }}>
            <option value="">All providers</option>
            {[...new Set((deployments.data ?? []).map((d) => d.provider))].sort().map((p) => <option key={p} value={p}>{p}</option>)}
          </select>
        </label>
      </div>
      {notice && <Notice tone={notice.tone} onClose={() => setNotice(null)}>{notice.text}</Notice>}
      {list.loading ? (
        <Loading what="Loading instances" />
      ) : list.error && !list.data ? (
        <ErrorBox message={list.error} onRetry={() => void list.reload()} />
      ) : !list.data || list.data.items.length === 0 ? (
        <Empty>
          No instances{state || deploymentId || provider ? " match these filters" : " yet"}. Provision one from{" "}
          <a href={href("/deployments")}>Deployments</a>.
        </Empty>
      ) : (
        <>
          {list.error && <Notice tone="bad">Could not refresh: {list.error}</Notice>}
          <div className="table-wrap">
            <table aria-label="Instances">
              <thead>
                <tr>
                  <th scope="col">Instance</th>
                  <th scope="col">Deployment</th>
                  <th scope="col">State</th>
                  <th scope="col" className="w-progress">Progress</th>
                  <th scope="col">Address</th>
                  <th scope="col">Agent</th>
                  <th scope="col">Created</th>
                  <th scope="col"><span className="sr-only">Actions</span></th>
                </tr>
              </thead>
              <tbody>
                {list.data.items.map((i) => (
                  <tr key={i.id} data-instance-id={i.id} data-state={i.state}>
                    <td><a href={href(`/instances/${i.id}`)} className="mono">{shortId(i.id)}</a></td>
                    <td>{depName.get(i.deployment_id)?.name ?? shortId(i.deployment_id)}</td>
                    <td>
                      <StateBadge state={i.state} />
                      {i.attention && (
                        <span className="badge badge-bad" data-attention title={`${humanize(i.attention.step)} failing (${i.attention.attempts} attempts): ${i.attention.error}`}>
                          needs attention
                        </span>
                      )}
                      {i.error && <div className="cell-error" title={i.error}>{i.error}</div>}
                    </td>
                    <td>
                      <ProgressBar value={i.progress} label={`Progress of ${shortId(i.id)}`} />
                      <div className="step">{i.current_step ? humanize(i.current_step) : ""}</div>
                    </td>
                    <td className="mono">{i.ip_address ?? "—"}</td>
                    <td>
                      {i.agent_version ?? "—"}
                      {i.agent_integrity_ok === false && <span className="badge badge-bad" title="Agent version or checksum does not match">integrity</span>}
                    </td>
                    <td title={i.created_at}>{fmtAgo(i.created_at)}</td>
                    <td className="row-actions">
                      {i.state === "ready" && (
                        <button type="button" className="secondary" aria-label={`Drain ${shortId(i.id)}`} onClick={() => act("drain", i.id)}>Drain</button>
                      )}
                      {ACTIVE_STATES.includes(i.state) && i.state !== "terminating" && (
                        <button type="button" className="danger" aria-label={`Terminate ${shortId(i.id)}`} onClick={() => act("terminate", i.id)}>Terminate</button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <div className="pager">
            <span>{offset + 1}–{offset + list.data.items.length} of {list.data.total}</span>
            <button type="button" className="secondary" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>Previous</button>
            <button type="button" className="secondary" disabled={offset + PAGE >= list.data.total} onClick={() => setOffset(offset + PAGE)}>Next</button>
          </div>
        </>
      )}
    </>
  );
}
