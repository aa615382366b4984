import { useCallback, useEffect, useRef, useState } from "react";
import type { Result } from "../api/client";

export interface Resource<T> {
  data: T | undefined;
  loading: boolean;
  error: string | null;
  notAvailable: boolean;
  reload: () => Promise<void>;
}

/** Load once (and again when deps change); `reload` refreshes without showing a spinner again. */
export function useResource<T>(load: () => Promise<Result<T>>, deps: unknown[] = []): Resource<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [notAvailable, setNotAvailable] = useState(false);
  const loadRef = useRef(load);
  loadRef.current = load;
  const generation = useRef(0);

  const reload = useCallback(async () => {
    const mine = ++generation.current;
    const result = await loadRef.current();
    if (mine !== generation.current) return; // a newer load finished first or will
    if (result.ok) {
      setData(result.data);
      setError(null);
      setNotAvailable(false);
    } else {
      setError(result.message);
      setNotAvailable(result.notAvailable);
    }
    setLoading(false);
  }, []);

  useEffect(() => {
    setLoading(true);
    setData(undefined);
    void reload();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);

  return { data, loading, error, notAvailable, reload };
}

/** Call fn every `ms` while mounted (and the tab is visible). */
export function useInterval(fn: () => void, ms: number | null): void {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    if (ms === null) return;
    const id = window.setInterval(() => {
      if (document.visibilityState !== "hidden") ref.current();
    }, ms);
    return () => window.clearInterval(id);
  }, [ms]);
}

/** A function that runs at most once per `ms`, the last call always landing. */
export function useThrottled(fn: () => void, ms: number): () => void {
  const ref = useRef(fn);
  ref.current = fn;
  const last = useRef(0);
  const timer = useRef<number | null>(null);
  useEffect(() => () => {
    if (timer.current !== null) window.clearTimeout(timer.current);
  }, []);
  return useCallback(() => {
    const wait = last.current + ms - Date.now();
    if (wait <= 0) {
      last.current = Date.now();
      ref.current();
    } else if (timer.current === null) {
      timer.current = window.setTimeout(() => {
        timer.current = null;
        last.current = Date.now();
        ref.current();
      }, wait);
    }
  }, [ms]);
}
