import { useState, type FormEvent } from "react";
import { client, typed, type Schemas } from "../api/client";
import { Empty, Guard, Notice, PageHeader } from "../components/ui";
import { useResource } from "../lib/hooks";
import { useProjects } from "../lib/projects";
import { fmtAgo } from "../lib/format";

type User = Schemas["UserPublic"];
type Role = User["role"];
type Msg = { tone: "ok" | "bad"; text: string } | null;

export function UsersPage({ meId }: { meId: string }) {
  const users = useResource(() => typed(client.GET("/api/v1/users", { params: { query: { limit: 500 } } })), []);
  const projects = useProjects();
  const [notice, setNotice] = useState<Msg>(null);
  const [projectName, setProjectName] = useState("");
  const [form, setForm] = useState({ email: "", full_name: "", password: "", role: "member" as Role, project_id: "" });
  const [formError, setFormError] = useState<string | null>(null);
  const projectName_ = (id: string) => projects.data?.find((p) => p.id === id)?.name ?? id.slice(0, 8);

  const done = (ok: boolean, text: string, error?: string) => {
    setNotice(ok ? { tone: "ok", text } : { tone: "bad", text: error ?? "failed" });
    void users.reload();
  };

  const createProject = async (e: FormEvent) => {
    e.preventDefault();
    const r = await typed(client.POST("/api/v1/projects", { body: { name: projectName.trim() } }));
    if (r.ok) {
      setProjectName("");
      void projects.reload();
    }
    done(r.ok, `Project ${projectName.trim()} created.`, r.ok ? undefined : r.message);
  };

  const createUser = async (e: FormEvent) => {
    e.preventDefault();
    setFormError(null);
    const r = await typed(client.POST("/api/v1/users", {
      body: { email: form.email.trim(), full_name: form.full_name.trim() || null, password: form.password, role: form.role, is_active: true },
    }));
    if (!r.ok) {
      setFormError(r.message);
      return;
    }
    if (form.project_id) {
      const m = await typed(client.PUT("/api/v1/projects/{project_id}/members/{user_id}", {
        params: { path: { project_id: form.project_id, user_id: r.data.id } },
      }));
      if (!m.ok) setFormError(`User created, but not added to the project: ${m.message}`);
    }
    setForm({ email: "", full_name: "", password: "", role: "member", project_id: "" });
    done(true, `User ${r.data.email} created.`);
  };

  const update = async (u: User, body: { role?: Role; is_active?: boolean }, text: string) => {
    const r = await typed(client.PATCH("/api/v1/users/{user_id}", { params: { path: { user_id: u.id } }, body }));
    done(r.ok, text, r.ok ? undefined : r.message);
  };
  const addTo = async (u: User, projectId: string) => {
    const r = await typed(client.PUT("/api/v1/projects/{project_id}/members/{user_id}", { params: { path: { project_id: projectId, user_id: u.id } } }));
    done(r.ok, `${u.email} added to ${projectName_(projectId)}.`, r.ok ? undefined : r.message);
  };
  const removeFrom = async (u: User, projectId: string) => {
    const r = await typed(client.DELETE("/api/v1/projects/{project_id}/members/{user_id}", { params: { path: { project_id: projectId, user_id: u.id } } }));
    done(r.ok, `${u.email} removed from ${projectName_(projectId)}.`, r.ok ? undefined : r.message);
  };

  return (
    <>
      <PageHeader title="Users and projects" />
      {notice && <Notice tone={notice.tone} onClose={() => setNotice(null)}>{notice.text}</Notice>}
      <section className="card" aria-labelledby="projects-title">
        <h2 id="projects-title">Projects</h2>
        <Guard res={projects} what="Projects" path="GET /api/v1/projects">
          {(list) => list.length === 0 ? <Empty>No projects yet.</Empty> : (
            <ul className="chips" aria-label="Projects">
              {list.map((p) => {
                const n = (users.data?.items ?? []).filter((u) => u.project_ids.includes(p.id)).length;
                return <li key={p.id}>{p.name} <span className="muted">({n} {n === 1 ? "member" : "members"})</span></li>;
              })}
            </ul>
          )}
        </Guard>
        <form className="inline-form" onSubmit={createProject} aria-label="Create a project">
          <label htmlFor="project-name">Project name</label>
          <input id="project-name" required maxLength={120} value={projectName} onChange={(e) => setProjectName(e.target.value)} />
          <button type="submit">Create project</button>
        </form>
      </section>

      <form className="card form-grid" onSubmit={createUser} aria-labelledby="new-user-title">
        <h2 id="new-user-title">New user</h2>
        <label htmlFor="user-email">E-mail</label>
        <input id="user-email" type="email" required value={form.email} onChange={(e) => setForm({ ...form, email: e.target.value })} />
        <label htmlFor="user-name">Full name (optional)</label>
        <input id="user-name" value={form.full_name} onChange={(e) => setForm({ ...form, full_name: e.target.value })} />
        <label htmlFor="user-password">Initial password</label>
        <input id="user-password" type="password" autoComplete="new-password" required value={form.password} onChange={(e) => setForm({ ...form, password: e.target.value })} />
        <label htmlFor="user-role">Role</label>
        <select id="user-role" value={form.role} onChange={(e) => setForm({ ...form, role: e.target.value as Role })}>
          <option value="member">Member (acts within their projects)</option>
          <option value="admin">Admin (everything)</option>
        </select>
        <label htmlFor="user-project">Project</label>
        <select id="user-project" value={form.project_id} onChange={(e) => setForm({ ...form, project_id: e.target.value })}>
          <option value="">None for now</option>
          {(projects.data ?? []).map((p) => <option key={p.id} value={p.id}>{p.name}</option>)}
        </select>
        {formError && <div className="error-box full" role="alert">{formError}</div>}
        <div className="full"><button type="submit">Create user</button></div>
      </form>

      <Guard res={users} what="Users" path="GET /api/v1/users">
        {(page) => (
          <div className="table-wrap">
            <table aria-label="Users">
              <thead>
                <tr><th scope="col">User</th><th scope="col">Role</th><th scope="col">Projects</th><th scope="col">Status</th><th scope="col">Created</th><th scope="col"><span className="sr-only">Actions</span></th></tr>
              </thead>
              <tbody>
                {page.items.map((u) => (
                  <tr key={u.id} data-user-id={u.id}>
                    <td>{u.email}{u.full_name && <div className="step">{u.full_name}</div>}</td>
                    <td>
                      <select aria-label={`Role of ${u.email}`} value={u.role} disabled={u.id === meId}
                        onChange={(e) => update(u, { role: e.target.value as Role }, `${u.email} is now ${e.target.value}.`)}>
                        <option value="member">member</option>
                        <option value="admin">admin</option>
                      </select>
                    </td>
                    <td>
                      <ul className="chips">
                        {u.project_ids.map((pid) => (
                          <li key={pid}>
                            {projectName_(pid)}
                            <button type="button" className="link" aria-label={`Remove ${u.email} from ${projectName_(pid)}`} onClick={() => removeFrom(u, pid)}>×</button>
                          </li>
                        ))}
                      </ul>
                      {(projects.data ?? []).some((p) => !u.project_ids.includes(p.id)) && (
                        <select aria-label={`Add ${u.email} to a project`} value="" onChange={(e) => e.target.value && addTo(u, e.target.value)}>
                          <option value="">Add to project…</option>
                          {(projects.data ?? []).filter((p) => !u.project_ids.includes(p.id)).map((p) => <option key={p.id} value={p.id}>{p.name}</option>)}
                        </select>
                      )}
                    </td>
                    <td>{u.is_active ? <span className="badge badge-ok">Active</span> : <span className="badge badge-muted">Deactivated</span>}</td>
                    <td title={u.created_at}>{fmtAgo(u.created_at)}</td>
                    <td className="row-actions">
                      {u.id !== meId && (
                        <button type="button" className={u.is_active ? "danger" : "secondary"}
                          aria-label={`${u.is_active ? "Deactivate" : "Activate"} ${u.email}`}
                          onClick={() => update(u, { is_active: !u.is_active }, `${u.email} ${u.is_active ? "deactivated: they can no longer sign in" : "activated"}.`)}>
                          {u.is_active ? "Deactivate" : "Activate"}
                        </button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Guard>
    </>
  );
}
