import { useState, type FormEvent } from "react";
import { client, typed, type Schemas } from "../api/client";
import { Empty, ErrorBox, Guard, Notice, PageHeader } from "../components/ui";
import { useResource } from "../lib/hooks";
import { useProjects } from "../lib/projects";
import { fmtAgo, fmtNumber } from "../lib/format";

type ApiKey = Schemas["ApiKeyPublic"];
type ApiKeyCreated = Schemas["ApiKeyCreated"];

const PATH = "/api/v1/keys";

export function KeysPage() {
  const projects = useProjects();
  const [showRevoked, setShowRevoked] = useState(false);
  const keys = useResource(
    () => typed(client.GET("/api/v1/keys", { params: { query: { include_revoked: showRevoked } } })),
    [showRevoked],
  );
  const [created, setCreated] = useState<ApiKeyCreated | null>(null);
  const [notice, setNotice] = useState<{ tone: "ok" | "bad"; text: string } | null>(null);
  const [copied, setCopied] = useState(false);

  const [name, setName] = useState("");
  const [projectId, setProjectId] = useState("");
  const [rpm, setRpm] = useState("");
  const [tpm, setTpm] = useState("");
  const [formError, setFormError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const project = projectId || projects.data?.[0]?.id || "";
  const projectName = (id: string) => projects.data?.find((p) => p.id === id)?.name ?? id.slice(0, 8);

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setFormError(null);
    if (!project) {
      setFormError("Choose a project first.");
      return;
    }
    setBusy(true);
    const r = await typed(client.POST("/api/v1/keys", {
      body: {
        project_id: project,
        name: name.trim(),
        rpm_limit: rpm ? Number(rpm) : null,
        tpm_limit: tpm ? Number(tpm) : null,
      },
    }));
    setBusy(false);
    if (!r.ok) {
      setFormError(r.message);
      return;
    }
    setCreated(r.data);
    setCopied(false);
    setName("");
    setRpm("");
    setTpm("");
    void keys.reload();
  };

  const revoke = async (k: ApiKey) => {
    if (!window.confirm(`Revoke the key "${k.name}" (${k.prefix}…)? Clients using it are refused within seconds.`)) return;
    const r = await typed(client.DELETE("/api/v1/keys/{key_id}", { params: { path: { key_id: k.id } } }));
    setNotice(r.ok ? { tone: "ok", text: `Key "${k.name}" revoked.` } : { tone: "bad", text: r.message });
    void keys.reload();
  };

  const copy = async () => {
    if (!created) return;
    try {
      await navigator.clipboard.writeText(created.secret);
      setCopied(true);
    } catch {
      setCopied(false);
    }
  };

  return (
    <>
      <PageHeader title="API keys" />
      {created && (
        <section className="secret card" aria-labelledby="secret-title" role="status">
          <h2 id="secret-title">Key "{created.name}" created</h2>
          <p>Copy the secret now: <strong>it will not be shown again.</strong></p>
          <div className="secret-row">
            <input aria-label="New API key secret" readOnly value={created.secret} className="mono" onFocus={(e) => e.target.select()} />
            <button type="button" onClick={copy}>{copied ? "Copied" : "Copy"}</button>
            <button type="button" className="secondary" onClick={() => setCreated(null)}>I have saved it</button>
          </div>
        </section>
      )}
      <form className="card form-grid" onSubmit={create} aria-labelledby="new-key-title">
        <h2 id="new-key-title">New key</h2>
        <label htmlFor="key-name">Name</label>
        <input id="key-name" required maxLength={120} value={name} onChange={(e) => setName(e.target.value)} placeholder="e.g. production backend" />
        <label htmlFor="key-project">Project</label>
        <select id="key-project" value={project} onChange={(e) => setProjectId(e.target.value)}>
          {(projects.data ?? []).map((p) => <option key={p.id} value={p.id}>{p.name}</option>)}
        </select>
        <label htmlFor="key-rpm">Requests per minute (optional)</label>
        <input id="key-rpm" type="number" min={1} value={rpm} onChange={(e) => setRpm(e.target.value)} placeholder="no limit" />
        <label htmlFor="key-tpm">Tokens per minute (optional)</label>
        <input id="key-tpm" type="number" min={1} value={tpm} onChange={(e) => setTpm(e.target.value)} placeholder="no limit" />
        {formError && <div className="error-box full" role="alert">{formError}</div>}
        <div className="full"><button type="submit" disabled={busy}>{busy ? "Creating…" : "Create key"}</button></div>
      </form>
      {notice && <Notice tone={notice.tone} onClose={() => setNotice(null)}>{notice.text}</Notice>}
      <div className="filters">
        <label className="check">
          <input type="checkbox" checked={showRevoked} onChange={(e) => setShowRevoked(e.target.checked)} /> Show revoked keys
        </label>
      </div>
      <Guard res={keys} what="API keys" path={`GET ${PATH}`}>
        {(list) => list.length === 0 ? (
          <Empty>No API keys yet. Create one above to call the gateway.</Empty>
        ) : (
          <div className="table-wrap">
            <table aria-label="API keys">
              <thead>
                <tr><th scope="col">Name</th><th scope="col">Key</th><th scope="col">Project</th><th scope="col">Limits</th><th scope="col">Created</th><th scope="col">Last used</th><th scope="col">Status</th><th scope="col"><span className="sr-only">Actions</span></th></tr>
              </thead>
              <tbody>
                {list.map((k) => (
                  <tr key={k.id} data-key-id={k.id}>
                    <td>{k.name}</td>
                    <td className="mono">{k.prefix}…</td>
                    <td>{projectName(k.project_id)}</td>
                    <td>{k.rpm_limit ? `${fmtNumber(k.rpm_limit)} req/min` : "no request limit"}<br />{k.tpm_limit ? `${fmtNumber(k.tpm_limit)} tok/min` : "no token limit"}</td>
                    <td title={k.created_at}>{fmtAgo(k.created_at)}</td>
                    <td title={k.last_used_at ?? ""}>{fmtAgo(k.last_used_at)}</td>
                    <td>{k.revoked_at ? <span className="badge badge-muted">Revoked</span> : <span className="badge badge-ok">Active</span>}</td>
                    <td className="row-actions">
                      {!k.revoked_at && (
                        <button type="button" className="danger" aria-label={`Revoke key ${k.name}`} onClick={() => revoke(k)}>Revoke</button>
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
