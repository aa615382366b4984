import { client, typed } from "../api/client";
import { useResource } from "./hooks";

export interface Project {
  id: string;
  name: string;
}

/** The caller's projects (admins: all). */
export function useProjects() {
  return useResource(() => typed(client.GET("/api/v1/projects")), []);
}
