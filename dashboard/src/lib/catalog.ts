import { client, typed, type Result, type Schemas } from "../api/client";
import { useResource } from "./hooks";

export type Provider = Schemas["ProviderPublic"];
export type ProviderKind = Schemas["ProviderKindPublic"];
export type InstanceType = Schemas["InstanceTypePublic"];
export type Flavor = Schemas["FlavorPublic"];
export type TypeChoice = Schemas["InstanceTypeChoice"];

/** What a deployment may run on (enabled providers' types with prices), readable by members. */
export function useTypeChoices() {
  return useResource(() => typed(client.GET("/api/v1/deployments/instance-types")), []);
}

export const PROVIDERS_PATH = "/api/v1/providers";
export const TYPES_PATH = "/api/v1/providers/{id}/instance-types";

/** Providers (an admin's view: members get 403 and the forms fall back to plain ids). */
export function useProviders() {
  return useResource(() => typed(client.GET("/api/v1/providers")), []);
}

export const KINDS_PATH = "/api/v1/providers/kinds";

/** Provider kinds the platform knows (its registry), whether each can run here, and why not. */
export function useProviderKinds() {
  return useResource(() => typed(client.GET("/api/v1/providers/kinds")), []);
}

/** Instance types of every provider, in one list. */
export function useInstanceTypes() {
  return useResource(async (): Promise<Result<InstanceType[]>> => {
    const providers = await typed(client.GET("/api/v1/providers"));
    if (!providers.ok) return providers;
    const lists = await Promise.all(
      providers.data.map((p) =>
        typed(client.GET("/api/v1/providers/{provider_id}/instance-types", { params: { path: { provider_id: p.id } } })),
      ),
    );
    const failed = lists.find((l) => !l.ok);
    if (failed && !failed.ok) return failed;
    return { ok: true, status: 200, data: lists.flatMap((l) => (l.ok ? l.data : [])) };
  }, []);
}

export function useFlavors() {
  return useResource(() => typed(client.GET("/api/v1/deployments/flavors")), []);
}
