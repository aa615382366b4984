import { describe, expect, it } from "vitest";
import { fmtDuration, humanize, toCsv } from "./format";
import { describeError } from "../api/client";
import { eventInstanceId } from "./events";
import { niceCeil } from "../components/LineChart";

describe("format", () => {
  it("writes durations a person reads", () => {
    expect(fmtDuration(250)).toBe("250 ms");
    expect(fmtDuration(4200)).toBe("4.2 s");
    expect(fmtDuration(125000)).toBe("2 min 5 s");
    expect(fmtDuration(null)).toBe("—");
  });
  it("quotes CSV cells that need it", () => {
    const csv = toCsv([{ model: 'a,"b"', tokens: 3 }, { model: "c", tokens: null }]);
    expect(csv).toBe('model,tokens\r\n"a,""b""",3\r\nc,\r\n');
  });
  it("humanizes keys", () => {
    expect(humanize("input_tokens")).toBe("Input tokens");
    expect(humanize("engine_http_up")).toBe("Engine HTTP up");
    expect(humanize("api_key_id")).toBe("API key id");
  });
});

describe("api errors", () => {
  it("uses FastAPI's detail string", () => {
    expect(describeError(409, { detail: "instance is already terminated" })).toBe("instance is already terminated");
  });
  it("names the field of a validation error", () => {
    const body = { detail: [{ loc: ["body", "max_instances"], msg: "Input should be greater than 0" }] };
    expect(describeError(422, body)).toBe("max_instances: Input should be greater than 0");
  });
  it("says when the server is unreachable", () => {
    expect(describeError(0, null)).toMatch(/Cannot reach/);
  });
  it("finds the instance an event is about", () => {
    expect(eventInstanceId({ instance_id: "a" })).toBe("a");
    expect(eventInstanceId({ instance: { id: "b" } })).toBe("b");
    expect(eventInstanceId("text")).toBeUndefined();
  });
});

describe("chart axis", () => {
  it("rounds the top of the axis up to a readable number", () => {
    expect(niceCeil(1425)).toBe(2000);
    expect(niceCeil(0.13)).toBe(0.2);
    expect(niceCeil(22.4)).toBe(25);
    expect(niceCeil(0)).toBe(1);
  });
});
