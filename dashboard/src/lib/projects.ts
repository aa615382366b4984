import { request, rows } from "../api/client";
import { useResource } from "./hooks";

export interface Project {
  id: string;
  name: string;
}

/** The caller's projects (admins: all); falls back to the projects of visible deployments. */
export function useProjects() {
  return useResource(async () => {
    const r = await request<unknown>("GET", "/api/v1/projects");
    if (r.ok) return { ...r, data: rows<Project>(r.data) };
    const deps = await request<unknown>("GET", "/api/v1/deployments");
    if (!deps.ok) return r;
    const seen = new Map<string, Project>();
    for (const d of rows<{ project_id: string }>(deps.data)) {
      seen.set(d.project_id, { id: d.project_id, name: `project ${d.project_id.slice(0, 8)}` });
    }
    return { ok: true as const, status: 200, data: [...seen.values()] };
  }, []);
}
