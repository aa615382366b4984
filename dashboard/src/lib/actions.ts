import { client, typed, type Result } from "../api/client";

export async function drainInstance(id: string): Promise<Result<unknown>> {
  return typed(client.POST("/api/v1/instances/{instance_id}/drain", { params: { path: { instance_id: id } } }));
}

export async function terminateInstance(id: string): Promise<Result<unknown>> {
  return typed(client.DELETE("/api/v1/instances/{instance_id}", { params: { path: { instance_id: id } } }));
}

export async function provisionInstance(deploymentId: string): Promise<Result<{ id: string }>> {
  return typed(
    client.POST("/api/v1/deployments/{deployment_id}/instances", { params: { path: { deployment_id: deploymentId } } }),
  );
}

export const ACTIVE_STATES = ["provisioning", "booting", "ready", "draining", "terminating"];
