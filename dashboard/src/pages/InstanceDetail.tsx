import { useState } from "react";
import { client, typed, type InstanceAttention, type InstanceDetail } from "../api/client";
import { LineChart } from "../components/LineChart";
import { pointsOf, type Point } from "../lib/metrics";
import { ErrorBox, Empty, LiveIndicator, Loading, Notice, PageHeader, ProgressBar, StateBadge } from "../components/ui";
import { eventInstanceId, useLiveEvents } from "../lib/events";
import { useInterval, useResource, useThrottled } from "../lib/hooks";
import { fmtAgo, fmtDuration, fmtNumber, fmtTime, humanize, shortId } from "../lib/format";
import { href } from "../lib/router";
import { ACTIVE_STATES, drainInstance, terminateInstance } from "../lib/actions";

export function InstanceDetailPage({ id }: { id: string }) {
  const [notice, setNotice] = useState<{ tone: "ok" | "bad"; text: string } | null>(null);
  const res = useResource(
    () => typed(client.GET("/api/v1/instances/{instance_id}", { params: { path: { instance_id: id } } })),
    [id],
  );
  const refresh = useThrottled(() => void res.reload(), 500);
  const mode = useLiveEvents(
    (e) => {
      const about = eventInstanceId(e.data);
      if (!about || about === id) refresh();
    },
    () => void res.reload(),
    3000,
  );

  const act = async (what: "drain" | "terminate") => {
    if (what === "terminate" && !window.confirm(`Terminate instance ${shortId(id)}?`)) return;
    const r = what === "drain" ? await drainInstance(id) : await terminateInstance(id);
    setNotice(r.ok ? { tone: "ok", text: `${humanize(what)} requested.` } : { tone: "bad", text: r.message });
    void res.reload();
  };

  if (res.loading) return <Loading what="Loading instance" />;
  if (res.error && !res.data) {
    return (
      <>
        <PageHeader title={`Instance ${shortId(id)}`} />
        <ErrorBox message={res.error} onRetry={() => void res.reload()} />
        <p><a href={href("/instances")}>Back to instances</a></p>
      </>
    );
  }
  const i = res.data as InstanceDetail;
  return (
    <>
      <p className="crumbs"><a href={href("/instances")}>Instances</a> / <span className="mono">{shortId(i.id)}</span></p>
      <PageHeader title={`Instance ${shortId(i.id)}`}>
        <LiveIndicator mode={mode} />
        <a className="button secondary" href={i.temporal_url} target="_blank" rel="noreferrer">
          Open workflow in Temporal UI
        </a>
        {i.state === "ready" && <button type="button" className="secondary" onClick={() => act("drain")}>Drain</button>}
        {ACTIVE_STATES.includes(i.state) && i.state !== "terminating" && (
          <button type="button" className="danger" onClick={() => act("terminate")}>Terminate</button>
        )}
      </PageHeader>
      {notice && <Notice tone={notice.tone} onClose={() => setNotice(null)}>{notice.text}</Notice>}
      {i.error && <div className="error-box" role="alert"><strong>Error:</strong> {i.error}</div>}
      {i.attention && <AttentionPanel attention={i.attention} />}

      <section className="grid-2" aria-label="Summary">
        <div className="card">
          <h2>Status</h2>
          <dl className="kv">
            <dt>State</dt><dd><StateBadge state={i.state} /></dd>
            <dt>Progress</dt><dd><ProgressBar value={i.progress} label="Instance progress" /></dd>
            <dt>Current step</dt><dd>{i.current_step ? humanize(i.current_step) : "—"}</dd>
            <dt>Created</dt><dd>{fmtTime(i.created_at)}</dd>
            <dt>Ready at</dt><dd>{fmtTime(i.ready_at)}</dd>
            <dt>Terminated at</dt><dd>{fmtTime(i.terminated_at)}</dd>
            {i.termination_reason && (<><dt>Termination reason</dt><dd>{humanize(i.termination_reason)}</dd></>)}
          </dl>
        </div>
        <div className="card">
          <h2>Machine and agent</h2>
          <dl className="kv">
            <dt>Provider resource</dt><dd className="mono">{i.provider_resource_id ?? "—"}</dd>
            <dt>IP address</dt><dd className="mono">{i.ip_address ?? "—"}</dd>
            <dt>Engine</dt><dd className="mono">{i.engine_url ?? "—"}</dd>
            <dt>Agent</dt><dd className="mono">{i.agent_url ?? "—"}</dd>
            <dt>Agent version</dt>
            <dd>
              {i.agent_version ?? "—"}{" "}
              {i.agent_integrity_ok === true && <span className="badge badge-ok">checksum OK</span>}
              {i.agent_integrity_ok === false && <span className="badge badge-bad">checksum mismatch</span>}
            </dd>
            <dt>Last heartbeat</dt><dd>{fmtTime(i.last_heartbeat_at)}</dd>
            <dt>Workflow</dt><dd className="mono">{i.workflow_id}</dd>
          </dl>
        </div>
      </section>

      <section className="card" aria-labelledby="timeline-title">
        <h2 id="timeline-title">State timeline</h2>
        <ol className="timeline">
          <li>
            <time dateTime={i.created_at}>{fmtTime(i.created_at)}</time>
            <span><StateBadge state="provisioning" /></span>
            <span className="reason">requested</span>
          </li>
          {i.history.map((h, n) => (
              <li key={n}>
                <time dateTime={h.at}>{fmtTime(h.at)}</time>
                <span>{h.from_state ? <StateBadge state={h.from_state} /> : null} → <StateBadge state={h.to_state} /></span>
                {h.reason && <span className="reason">{h.reason}</span>}
              </li>
            ))}
        </ol>
      </section>

      <section className="card" aria-labelledby="actions-title">
        <h2 id="actions-title">Action log</h2>
        {i.actions.length === 0 ? (
          <Empty>No actions recorded yet.</Empty>
        ) : (
          <div className="table-wrap">
            <table aria-label="Action log">
              <thead>
                <tr><th scope="col">Step</th><th scope="col">Status</th><th scope="col">Started</th><th scope="col">Duration</th><th scope="col">Detail / error</th></tr>
              </thead>
              <tbody>
                {i.actions.map((a, n) => (
                  <tr key={n} className={a.error ? "row-error" : undefined}>
                    <td>{humanize(a.step)}</td>
                    <td><span className={`badge badge-${a.status === "succeeded" || a.status === "success" ? "ok" : a.status === "failed" ? "bad" : a.status === "running" ? "info" : "muted"}`}>{humanize(a.status)}</span></td>
                    <td>{fmtTime(a.started_at)}</td>
                    <td>{a.finished_at ? fmtDuration(a.duration_ms) : "running…"}</td>
                    <td>{a.error ? <span className="cell-error">{a.error}</span> : (a.detail ?? "")}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>

      <section className="card" aria-labelledby="volumes-title">
        <h2 id="volumes-title">Volumes</h2>
        {i.volumes.length === 0 ? (
          <Empty>No volumes attached.</Empty>
        ) : (
          <div className="table-wrap">
            <table aria-label="Volumes">
              <thead><tr><th scope="col">Volume</th><th scope="col">Type</th><th scope="col">Size</th><th scope="col">Boot</th><th scope="col">On terminate</th><th scope="col">State</th></tr></thead>
              <tbody>
                {i.volumes.map((v) => (
                  <tr key={v.provider_volume_id}>
                    <td className="mono">{v.provider_volume_id}</td>
                    <td>{v.volume_type}</td>
                    <td>{fmtNumber(v.size_gb)} GB</td>
                    <td>{v.is_boot ? "yes" : "no"}</td>
                    <td>{v.delete_on_terminate ? "deleted" : "kept"}</td>
                    <td>{humanize(v.state)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>

      <InstanceCharts id={i.id} />
    </>
  );
}

/** A cleanup step that keeps failing: what is left at the provider and what to do. The step goes
 * on retrying; the panel disappears by itself once it succeeds. */
function AttentionPanel({ attention: a }: { attention: InstanceAttention }) {
  return (
    <section className="card attention" role="alert" aria-labelledby="attention-title">
      <h2 id="attention-title">Needs attention</h2>
      <p>
        <strong>{humanize(a.step)}</strong> has failed {a.attempts} times since {fmtTime(a.since)}
        {" "}({fmtAgo(a.since)}) and goes on retrying.
      </p>
      <dl className="kv">
        <dt>Last error</dt><dd className="cell-error">{a.error}</dd>
        <dt>Left at the provider</dt>
        <dd>
          {a.leaked.length === 0 ? "—" : (
            <ul className="leaked" aria-label="Leaked resource ids">
              {a.leaked.map((r) => <li key={r} className="mono">{r}</li>)}
            </ul>
          )}
        </dd>
        <dt>What to do</dt><dd>{a.hint}</dd>
      </dl>
    </section>
  );
}

function InstanceCharts({ id }: { id: string }) {
  const gpu = useResource(() => typed(client.GET("/api/v1/metrics/gpu", { params: { query: { instance_id: id, step_s: 15 } } })), [id]);
  const req = useResource(() => typed(client.GET("/api/v1/metrics/requests", { params: { query: { instance_id: id, step_s: 15 } } })), [id]);
  useInterval(() => { void gpu.reload(); void req.reload(); }, 10000);
  const points = (gpu.data?.instances.find((s) => s.instance_id === id)?.points ?? []) as Point[];
  const rp = req.data?.points as Point[] | undefined;
  return (
    <section className="card" aria-labelledby="charts-title">
      <h2 id="charts-title">GPU and engine (last hour)</h2>
      {gpu.loading ? <Loading what="Loading metrics" /> : gpu.error && !gpu.data ? <ErrorBox message={gpu.error} /> : (
        <div className="grid-2">
          <LineChart title="GPU utilisation" unit=" %" max={100} series={pointsOf(points, "gpu_utilization", "GPU")} format={(v) => v.toFixed(0)} />
          <LineChart title="GPU memory used" unit=" MB" series={pointsOf(points, "gpu_memory_used_mb", "memory")} format={(v) => v.toFixed(0)} />
          <LineChart title="Requests running / waiting" series={[...pointsOf(points, "requests_running", "running"), ...pointsOf(points, "requests_waiting", "waiting")]} format={(v) => v.toFixed(0)} />
          <LineChart title="KV cache usage" unit=" %" max={100} series={pointsOf(points, "kv_cache_usage", "KV cache").map((s) => ({ ...s, points: s.points.map((p) => ({ ...p, v: p.v * 100 })) }))} format={(v) => v.toFixed(0)} />
          <LineChart title="Request rate" unit=" req/s" series={pointsOf(rp, "request_rate_per_s", "requests")} format={(v) => v.toFixed(2)} />
          <LineChart title="Latency" unit=" ms" series={[...pointsOf(rp, "ttft_p95_ms", "TTFT p95"), ...pointsOf(rp, "latency_p95_ms", "latency p95")]} format={(v) => v.toFixed(0)} />
        </div>
      )}
    </section>
  );
}
