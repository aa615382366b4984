import type { Series } from "../components/LineChart";

export type Point = { at: string } & Record<string, unknown>;

/** One series from a metric's points; null values (no data in a bucket) are left out. */
export function pointsOf(points: Point[] | undefined, key: string, label: string): Series[] {
  const pts = (points ?? [])
    .filter((p) => typeof p[key] === "number")
    .map((p) => ({ t: new Date(p.at).getTime(), v: p[key] as number }));
  return [{ label, points: pts }];
}
