import { useEffect, useMemo, useState, type FormEvent } from "react";
import { client, typed, type Deployment, type InstanceSummary, type Schemas } from "../api/client";
import { Empty, ErrorBox, Guard, LiveIndicator, Notice, PageHeader, ProgressBar, StateBadge } from "../components/ui";
import { ScalingChart } from "../components/ScalingChart";
import { useFlavors, useTypeChoices } from "../lib/catalog";
import { useLiveEvents, type LiveEvent } from "../lib/events";
import { useResource, useThrottled } from "../lib/hooks";
import { useProjects } from "../lib/projects";
import { fmtMoney, fmtTime, humanize, shortId } from "../lib/format";
import { href } from "../lib/router";
import { ACTIVE_STATES, drainInstance, provisionInstance, terminateInstance } from "../lib/actions";

type Full = Deployment & { live_instances?: number; deleted_at?: string | null };
type Routing = Deployment["routing"];
// One label per routing strategy the API offers (a new one fails the type check until labelled).
const ROUTING_LABELS: Record<Routing, string> = {
  sticky_header: "Sticky by session header (reuses the KV cache)",
  sticky_user: "Sticky by the request's user field",
  least_load: "Least loaded instance",
  prefix_aware: "Where the prompt's prefix is cached (bounded load)",
};
type Msg = { tone: "ok" | "bad"; text: string } | null;

// Autoscaling thresholds edited as fields; any other policy keys are kept as they are.
// The fields of core/autoscaling.py's AutoscalingConfig (the API refuses unknown keys).
const POLICY_FIELDS = [
  { key: "scale_up_queue_wait_s", label: "Scale up when the average queue wait exceeds (s)", step: "0.5" },
  { key: "scale_up_active_per_gpu", label: "Scale up when active requests per GPU exceed", step: "1" },
  { key: "scale_up_step", label: "Servers ordered at a time", step: "1" },
  { key: "scale_up_delay_s", label: "…for at least (s)", step: "5" },
  { key: "scale_down_gpu_utilization", label: "Scale down when GPU utilisation stays below (0–1)", step: "0.05" },
  { key: "scale_down_delay_s", label: "…for (s)", step: "30" },
  { key: "window_s", label: "Window the signals are averaged over (s)", step: "5" },
  { key: "target_rps_per_gpu", label: "Target tracking: requests/s one GPU serves within the SLO (empty: off)", step: "0.5" },
  { key: "target_prompt_tokens_per_gpu", label: "…or by tokens: prompt tokens/s one GPU prefills (with the next; empty: off)", step: "100" },
  { key: "target_output_tokens_per_gpu", label: "…and output tokens/s one GPU generates at a full batch", step: "100" },
  { key: "target_utilization", label: "…sized at this share of it (0–1)", step: "0.05" },
  { key: "target_down_delay_s", label: "…drained towards the need after (s; empty: the boot time)", step: "30" },
  { key: "scale_down_step", label: "…at most this many at a time", step: "1" },
];

export function DeploymentsPage() {
  const deployments = useResource(() => typed(client.GET("/api/v1/deployments")), []);
  const instances = useResource(
    () => typed(client.GET("/api/v1/instances", { params: { query: { limit: 500 } } })),
    [],
  );
  const [eventsVersion, setEventsVersion] = useState<Record<string, number>>({});
  const [editing, setEditing] = useState<Full | "new" | null>(null);
  const [notice, setNotice] = useState<Msg>(null);
  const types = useTypeChoices();

  const refresh = useThrottled(() => {
    void instances.reload();
    void deployments.reload();
  }, 700);
  const onEvent = (e: LiveEvent) => {
    refresh();
    const depId = (e.data as { data?: { deployment_id?: string } } | null)?.data?.deployment_id;
    if (depId) setEventsVersion((v) => ({ ...v, [depId]: (v[depId] ?? 0) + 1 }));
  };
  const mode = useLiveEvents(onEvent, refresh, 4000);

  const byDeployment = useMemo(() => {
    const m = new Map<string, InstanceSummary[]>();
    for (const i of instances.data?.items ?? []) {
      if (!ACTIVE_STATES.includes(i.state) && i.state !== "startup_failed") continue;
      m.set(i.deployment_id, [...(m.get(i.deployment_id) ?? []), i]);
    }
    return m;
  }, [instances.data]);

  const say = (r: { ok: boolean; message?: string }, ok: string) => {
    setNotice(r.ok ? { tone: "ok", text: ok } : { tone: "bad", text: r.message ?? "failed" });
    refresh();
  };

  const provision = async (d: Full) => {
    const r = await provisionInstance(d.id);
    say(r, r.ok ? `Provisioning instance ${shortId(r.data.id)} of ${d.name}.` : "");
  };
  const autoscaling = async (d: Full, on: boolean) => {
    const path = { params: { path: { deployment_id: d.id } } };
    const r = await typed(on
      ? client.POST("/api/v1/deployments/{deployment_id}/autoscaling/start", path)
      : client.POST("/api/v1/deployments/{deployment_id}/autoscaling/stop", path));
    say(r, on ? `Autoscaling started for ${d.name}.` : `Autoscaling stopped for ${d.name}.`);
  };
  const remove = async (d: Full) => {
    if (!window.confirm(`Delete deployment ${d.name}? It stays on record for its history and costs. A deployment with live instances cannot be deleted.`)) return;
    const r = await typed(client.DELETE("/api/v1/deployments/{deployment_id}", { params: { path: { deployment_id: d.id } } }));
    say(r, `Deployment ${d.name} deleted.`);
  };
  const instanceAction = async (what: "drain" | "terminate", i: InstanceSummary) => {
    if (what === "terminate" && !window.confirm(`Terminate instance ${shortId(i.id)}?`)) return;
    const r = what === "drain" ? await drainInstance(i.id) : await terminateInstance(i.id);
    say(r, `${humanize(what)} requested for ${shortId(i.id)}.`);
  };
  const typeOf = (id: string) => types.data?.find((t) => t.id === id);

  return (
    <>
      <PageHeader title="Deployments">
        <LiveIndicator mode={mode} />
        {editing === null && <button type="button" onClick={() => setEditing("new")}>New deployment</button>}
      </PageHeader>
      {notice && <Notice tone={notice.tone} onClose={() => setNotice(null)}>{notice.text}</Notice>}
      {editing !== null && (
        <DeploymentForm
          initial={editing === "new" ? null : editing}
          onDone={(text) => { setEditing(null); if (text) setNotice({ tone: "ok", text }); refresh(); }}
        />
      )}
      <Guard res={deployments} what="Deployments" path="GET /api/v1/deployments">
        {(list) => list.length === 0 ? (
          <Empty>No deployments yet. Create one with “New deployment”.</Empty>
        ) : (
          <div className="cards">
            {(list as Full[]).filter((d) => !d.deleted_at).map((d) => {
              const live = byDeployment.get(d.id) ?? [];
              const t = typeOf(d.instance_type_id);
              return (
                <article key={d.id} className="card deployment" aria-labelledby={`dep-${d.id}`} data-deployment-id={d.id}>
                  <header className="card-head">
                    <h2 id={`dep-${d.id}`}>{d.name}</h2>
                    <span className={`badge ${d.autoscaling_enabled ? "badge-ok" : "badge-muted"}`}>
                      Autoscaling {d.autoscaling_enabled ? "on" : "off"}
                    </span>
                  </header>
                  <dl className="kv">
                    <dt>Model</dt><dd className="mono">{d.model}</dd>
                    <dt>Served as</dt><dd className="mono">{d.served_name}</dd>
                    <dt>Provider</dt><dd>{d.provider}</dd>
                    <dt>Instance type</dt><dd>{t ? `${t.name} (${fmtMoney(t.price_per_hour, t.currency)}/h)` : shortId(d.instance_type_id)}</dd>
                    <dt>Flavor</dt><dd>{d.flavor}</dd>
                    <dt>Instances</dt><dd>{live.length} live · min {d.min_instances} · max {d.max_instances}</dd>
                    {Object.keys(d.autoscaling).length > 0 && (<><dt>Autoscaling policy</dt><dd className="mono">{pairs(d.autoscaling)}</dd></>)}
                    {Object.keys(d.engine_args).length > 0 && (<><dt>Engine arguments</dt><dd className="mono">{pairs(d.engine_args)}</dd></>)}
                  </dl>
                  <div className="button-row">
                    <button type="button" onClick={() => provision(d)} aria-label={`Provision instance of ${d.name}`}>Provision instance</button>
                    <button type="button" className="secondary" onClick={() => autoscaling(d, !d.autoscaling_enabled)}>
                      {d.autoscaling_enabled ? "Stop autoscaling" : "Start autoscaling"}
                    </button>
                    <button type="button" className="secondary" onClick={() => setEditing(d)} aria-label={`Edit ${d.name}`}>Edit</button>
                    <button type="button" className="danger" onClick={() => remove(d)} aria-label={`Delete ${d.name}`}>Delete</button>
                  </div>
                  <ScalingChart deploymentId={d.id} name={d.name} version={eventsVersion[d.id] ?? 0}
                    enabled={d.autoscaling_enabled} upPerGpu={numberOr(d.autoscaling.scale_up_active_per_gpu)} />
                  <DeploymentEvents id={d.id} name={d.name} version={eventsVersion[d.id] ?? 0} />
                  {live.length > 0 && (
                    <table aria-label={`Instances of ${d.name}`} className="compact">
                      <tbody>
                        {live.map((i) => (
                          <tr key={i.id} data-instance-id={i.id} data-state={i.state}>
                            <td><a className="mono" href={href(`/instances/${i.id}`)}>{shortId(i.id)}</a></td>
                            <td><StateBadge state={i.state} /></td>
                            <td className="w-progress"><ProgressBar value={i.progress} label={`Progress of ${shortId(i.id)}`} /></td>
                            <td className="row-actions">
                              {i.state === "ready" && <button type="button" className="secondary" onClick={() => instanceAction("drain", i)} aria-label={`Drain ${shortId(i.id)}`}>Drain</button>}
                              {i.state !== "terminating" && i.state !== "startup_failed" && (
                                <button type="button" className="danger" onClick={() => instanceAction("terminate", i)} aria-label={`Terminate ${shortId(i.id)}`}>Terminate</button>
                              )}
                            </td>
                          </tr>
                        ))}
                      </tbody>
                    </table>
                  )}
                </article>
              );
            })}
          </div>
        )}
      </Guard>
    </>
  );
}

/** Recent configuration changes and scaling decisions of one deployment, newest first. */
function DeploymentEvents({ id, name, version }: { id: string; name: string; version: number }) {
  const events = useResource(
    () => typed(client.GET("/api/v1/deployments/{deployment_id}/events", { params: { path: { deployment_id: id }, query: { limit: 20 } } })),
    [id],
  );
  useEffect(() => {
    if (version > 0) void events.reload();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [version]);
  const list = events.data ?? [];
  return (
    <details className="events" open={list.length > 0}>
      <summary>Scaling decisions and changes ({list.length})</summary>
      {events.error && !events.data ? <p className="cell-error">{events.error}</p> : list.length === 0 ? (
        <p className="muted">Nothing yet: changes and the autoscaler's decisions appear here live.</p>
      ) : (
        <ul className="event-list" aria-label={`Events of ${name}`}>
          {list.slice(0, 8).map((e) => (
            <li key={e.id}><time dateTime={e.at}>{fmtTime(e.at)}</time> {describeEvent(e.kind, e.data)}</li>
          ))}
        </ul>
      )}
    </details>
  );
}

function numberOr(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

function pairs(o: Record<string, unknown>): string {
  return Object.entries(o).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : String(v)}`).join(" ");
}

function describeEvent(kind: string, data: Record<string, unknown>): string {
  // Scaling decisions: "+1 instance(s): 20 requests in flight for 1 instance(s)".
  const text =
    kind === "scaling" && data.change !== undefined
      ? `${String(data.change)} instance(s): ${String(data.reason ?? "")}`
      : (data.change ?? data.decision ?? data.reason ?? data.detail ?? data.action);
  const extra = [
    data.desired !== undefined ? `desired ${data.desired}` : null,
    data.instance_id ? `instance ${String(data.instance_id).slice(0, 8)}` : null,
  ].filter(Boolean).join(", ");
  const body = text !== undefined ? String(text) : JSON.stringify(data);
  return `${humanize(kind)}: ${body}${extra ? ` (${extra})` : ""}`;
}

function DeploymentForm({ initial, onDone }: { initial: Full | null; onDone: (msg?: string) => void }) {
  const projects = useProjects();
  const types = useTypeChoices();
  const flavors = useFlavors();
  const [f, setF] = useState({
    name: initial?.name ?? "",
    project_id: initial?.project_id ?? "",
    model: initial?.model ?? "",
    served_name: initial?.served_name ?? "",
    flavor: initial?.flavor ?? "cpu-sim",
    provider_id: (initial as { provider_id?: string } | null)?.provider_id ?? "",
    instance_type_id: initial?.instance_type_id ?? "",
    min_instances: String(initial?.min_instances ?? 0),
    max_instances: String(initial?.max_instances ?? 1),
    autoscaling_enabled: initial?.autoscaling_enabled ?? false,
    engine_args: JSON.stringify(initial?.engine_args ?? {}, null, 1),
    routing: initial?.routing ?? ("sticky_header" as Routing),
  });
  const known = new Set(POLICY_FIELDS.map((p) => p.key));
  const [policy, setPolicy] = useState<Record<string, unknown>>(
    Object.fromEntries(Object.entries(initial?.autoscaling ?? {}).filter(([k]) => known.has(k))),
  );
  const [policyExtra, setPolicyExtra] = useState(() => {
    const rest = Object.fromEntries(Object.entries(initial?.autoscaling ?? {}).filter(([k]) => !known.has(k)));
    return Object.keys(rest).length ? JSON.stringify(rest, null, 1) : "";
  });
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const set = (k: keyof typeof f) => (e: { target: { value: string } }) => setF({ ...f, [k]: e.target.value });

  const providers = useMemo(() => {
    const m = new Map<string, { id: string; name: string; kind: string }>();
    for (const t of types.data ?? []) m.set(t.provider_id, { id: t.provider_id, name: t.provider, kind: t.provider_kind });
    return [...m.values()];
  }, [types.data]);
  const providerId = f.provider_id || providers[0]?.id || "";
  const typeChoices = (types.data ?? []).filter((t) => !providerId || t.provider_id === providerId);
  const typeId = f.instance_type_id || typeChoices[0]?.id || "";
  const projectId = f.project_id || projects.data?.[0]?.id || "";

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    let engineArgs: unknown;
    try {
      engineArgs = JSON.parse(f.engine_args || "{}");
    } catch {
      setError("Engine arguments: not valid JSON (expected an object such as {\"max-model-len\": 8192}).");
      return;
    }
    let extra: Record<string, unknown> = {};
    try {
      extra = policyExtra.trim() ? JSON.parse(policyExtra) : {};
      if (typeof extra !== "object" || extra === null || Array.isArray(extra)) throw new Error();
    } catch {
      setError("Other autoscaling settings: not a JSON object.");
      return;
    }
    const min = Number(f.min_instances);
    const max = Number(f.max_instances);
    if (min > max) {
      setError("Minimum instances cannot be more than maximum instances.");
      return;
    }
    const common = {
      name: f.name.trim(), model: f.model.trim(), served_name: f.served_name.trim() || undefined,
      flavor: f.flavor, provider_id: providerId, instance_type_id: typeId,
      min_instances: min, max_instances: max,
      // only the fields set here: the API fills the rest of its policy with defaults
      autoscaling: { ...extra, ...policy } as Schemas["AutoscalingConfig"],
      engine_args: engineArgs as Record<string, unknown>, routing: f.routing,
    };
    setBusy(true);
    const r = initial
      ? await typed(client.PATCH("/api/v1/deployments/{deployment_id}", {
        params: { path: { deployment_id: initial.id } }, body: common,
      }))
      : await typed(client.POST("/api/v1/deployments", {
        body: {
          ...common, project_id: projectId, autoscaling_enabled: f.autoscaling_enabled,
          trusted: false, // the API's default; only an admin may set it
        },
      }));
    setBusy(false);
    if (!r.ok) {
      setError(r.notAvailable ? "This API server cannot create or edit deployments yet." : r.message);
      return;
    }
    onDone(initial ? `Deployment ${f.name} saved.` : `Deployment ${f.name} created.`);
  };

  return (
    <form className="card form-grid" onSubmit={submit} aria-labelledby="dep-form-title">
      <h2 id="dep-form-title">{initial ? `Edit ${initial.name}` : "New deployment"}</h2>
      <label htmlFor="dep-name">Name</label>
      <input id="dep-name" required maxLength={120} value={f.name} onChange={set("name")} />
      {!initial && (
        <>
          <label htmlFor="dep-project">Project</label>
          <select id="dep-project" value={projectId} onChange={set("project_id")} required>
            {(projects.data ?? []).map((p) => <option key={p.id} value={p.id}>{p.name}</option>)}
          </select>
        </>
      )}
      <label htmlFor="dep-model">Model</label>
      <input id="dep-model" required value={f.model} onChange={set("model")} placeholder="e.g. Qwen/Qwen2.5-0.5B-Instruct" />
      <label htmlFor="dep-served">Served name (optional)</label>
      <input id="dep-served" value={f.served_name} onChange={set("served_name")} placeholder="defaults to the model" />
      <label htmlFor="dep-flavor">Flavor</label>
      {flavors.data && flavors.data.length > 0 ? (
        <select id="dep-flavor" value={f.flavor} onChange={set("flavor")}>
          {flavors.data.map((x) => <option key={x.name} value={x.name} title={x.description}>{x.name}</option>)}
        </select>
      ) : (
        <input id="dep-flavor" value={f.flavor} onChange={set("flavor")} />
      )}
      <label htmlFor="dep-provider">Provider</label>
      {types.data ? (
        <select id="dep-provider" value={providerId} onChange={(e) => setF({ ...f, provider_id: e.target.value, instance_type_id: "" })}>
          {providers.map((p) => <option key={p.id} value={p.id}>{p.name} ({p.kind})</option>)}
        </select>
      ) : (
        <input id="dep-provider" value={f.provider_id} onChange={set("provider_id")} placeholder="provider id" />
      )}
      <label htmlFor="dep-type">Instance type</label>
      {types.data ? (
        <select id="dep-type" value={typeId} onChange={set("instance_type_id")}>
          {typeChoices.map((t) => (
            <option key={t.id} value={t.id}>
              {t.name} — {t.gpu_count}× {t.gpu_model ?? "CPU"}, {fmtMoney(t.price_per_hour, t.currency)}/h
            </option>
          ))}
        </select>
      ) : (
        <input id="dep-type" value={f.instance_type_id} onChange={set("instance_type_id")} placeholder="instance type id" />
      )}
      <label htmlFor="dep-routing">Routing</label>
      <select id="dep-routing" value={f.routing} onChange={(e) => setF({ ...f, routing: e.target.value as Routing })}>
        {(Object.entries(ROUTING_LABELS) as [Routing, string][]).map(([value, label]) => (
          <option key={value} value={value}>{label}</option>
        ))}
      </select>
      <label htmlFor="dep-min">Minimum instances</label>
      <input id="dep-min" type="number" min={0} max={1000} required value={f.min_instances} onChange={set("min_instances")} />
      <label htmlFor="dep-max">Maximum instances</label>
      <input id="dep-max" type="number" min={0} max={1000} required value={f.max_instances} onChange={set("max_instances")} />
      {!initial && (
        <label className="check full">
          <input type="checkbox" checked={f.autoscaling_enabled} onChange={(e) => setF({ ...f, autoscaling_enabled: e.target.checked })} />
          Start autoscaling now
        </label>
      )}
      <fieldset className="full">
        <legend>Autoscaling thresholds (empty: the platform's defaults)</legend>
        <div className="form-grid inner">
          {POLICY_FIELDS.map((p) => (
            <label key={p.key} className="stack">
              {p.label}
              <input type="number" step={p.step} min={0} value={policy[p.key] === undefined ? "" : String(policy[p.key])}
                onChange={(e) => {
                  const next = { ...policy };
                  if (e.target.value === "") delete next[p.key];
                  else next[p.key] = Number(e.target.value);
                  setPolicy(next);
                }} />
            </label>
          ))}
          <label className="stack">
            Other policy settings (JSON object)
            <textarea className="mono" rows={2} value={policyExtra} onChange={(e) => setPolicyExtra(e.target.value)} placeholder='{"predictive": true, "scale_down_active_per_gpu": 16}' />
          </label>
        </div>
      </fieldset>
      <label htmlFor="dep-engine" className="full">Engine arguments (JSON, flags without dashes)</label>
      <textarea id="dep-engine" className="full mono" rows={3} value={f.engine_args} onChange={set("engine_args")} />
      {types.error && !types.data && (
        <div className="full"><ErrorBox message={`Could not load the instance types: ${types.error}`} /></div>
      )}
      {types.data && types.data.length === 0 && (
        <div className="full error-box" role="alert">No enabled provider has instance types: an admin adds them under Providers &amp; prices.</div>
      )}
      {error && <div className="error-box full" role="alert">{error}</div>}
      <div className="full button-row">
        <button type="submit" disabled={busy}>{busy ? "Saving…" : initial ? "Save" : "Create deployment"}</button>
        <button type="button" className="secondary" onClick={() => onDone()}>Cancel</button>
      </div>
    </form>
  );
}

