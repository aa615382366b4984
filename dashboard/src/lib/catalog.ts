import { request, rows } from "../api/client";
import { useResource } from "./hooks";

export interface Provider {
  id: string;
  name: string;
  kind: string;
  enabled?: boolean;
}
export interface InstanceType {
  id: string;
  provider_id: string;
  name: string;
  gpu_model: string | null;
  gpu_count: number;
  gpu_memory_gb: number;
  vcpus?: number;
  ram_gb?: number;
  price_per_hour: number;
  currency: string;
}
export interface Flavor {
  name: string;
  description: string;
}

export const PROVIDERS_PATH = "/api/v1/providers";
export const TYPES_PATH = "/api/v1/instance-types";

export function useProviders() {
  return useResource(async () => {
    const r = await request<unknown>("GET", PROVIDERS_PATH);
    return r.ok ? { ...r, data: rows<Provider>(r.data) } : r;
  }, []);
}

export function useInstanceTypes() {
  return useResource(async () => {
    const r = await request<unknown>("GET", TYPES_PATH);
    return r.ok ? { ...r, data: rows<InstanceType>(r.data) } : r;
  }, []);
}

export function useFlavors() {
  return useResource(async () => {
    const r = await request<unknown>("GET", "/api/v1/deployments/flavors");
    return r.ok ? { ...r, data: rows<Flavor>(r.data) } : r;
  }, []);
}
