import { describe, expect, it } from "vitest";
import { describeResult, describeScaling, isScaling, mergeRounds, roundAt, stepRuns, toRound, type Decision } from "./scaling";

function decision(over: Partial<Decision>): Decision {
  return {
    id: "d", at: "2026-01-01T10:00:00Z", delta: 0, action: "none", reason: "steady", instances: 1,
    inputs: {}, drain: [], result: null, ...over,
  };
}

describe("scaling chart data", () => {
  it("reads a decision's inputs, load per GPU as the policy divides it", () => {
    const r = toRound(decision({ inputs: { active_requests: 12, gpus: 4, ready: 1, booting: 3, queue_wait_avg_s: 0.5 } }));
    expect(r.activePerGpu).toBe(3);
    expect([r.ready, r.booting, r.queueWaitS, r.gpuUtilization]).toEqual([1, 3, 0.5, null]);
    expect(toRound(decision({ inputs: { active_requests: 2, gpus: 0 } })).activePerGpu).toBe(2);
    expect(toRound(decision({ action: "invalid_config" })).ready).toBeNull();
  });

  it("marks only the decisions that scaled", () => {
    expect(isScaling({ action: "scale_up", delta: 2 })).toBe(true);
    expect(isScaling({ action: "scale_down", delta: -1 })).toBe(true);
    expect(isScaling({ action: "none", delta: 0 })).toBe(false);
    expect(isScaling({ action: "invalid_config", delta: 0 })).toBe(false);
  });

  it("draws steps that hold each value until the next round", () => {
    const runs = stepRuns([{ t: 0, v: 0 }, { t: 10, v: 2 }, { t: 20, v: 2 }, { t: 30, v: 1 }], 40);
    expect(runs).toEqual([[[0, 0], [10, 0], [10, 2], [30, 2], [30, 1], [40, 1]]]);
    expect(stepRuns([{ t: 0, v: 1 }, { t: 5, v: null }, { t: 10, v: 3 }], 12)).toEqual([[[0, 1], [5, 1]], [[10, 3], [12, 3]]]);
    expect(stepRuns([], 5)).toEqual([]);
  });

  it("merges reloads by id, later copies winning, within the window", () => {
    const a = toRound(decision({ id: "a", at: "2026-01-01T10:00:00Z" }));
    const b = toRound(decision({ id: "b", at: "2026-01-01T10:00:15Z", action: "scale_up", delta: 1 }));
    const b2 = { ...b, result: { started: ["x"] } };
    const merged = mergeRounds([b, a], [b2], a.t);
    expect(merged.map((r) => r.id)).toEqual(["a", "b"]);
    expect(merged[1]!.result).toEqual({ started: ["x"] });
    expect(mergeRounds(merged, [], b.t).map((r) => r.id)).toEqual(["b"]);
    expect(roundAt(merged, b.t - 1)?.id).toBe("a");
    expect(roundAt(merged, b.t + 1)?.id).toBe("b");
  });

  it("says why it scaled and what came of it", () => {
    const r = toRound(decision({ action: "scale_down", delta: -1, instances: 2, reason: "GPU utilisation 0% for 3 s", result: { drained: ["i"], refused: [] } }));
    expect(describeScaling(r, () => "10:00:00")).toBe("Scale down -1 at 10:00:00 (2 instances then): GPU utilisation 0% for 3 s; drained 1");
    expect(describeResult({ started: ["a"], held_back_by_quota: "GPU quota" })).toBe("started 1, held back by quota: GPU quota");
  });
});
