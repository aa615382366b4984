import { fmtNumber, humanize } from "../lib/format";

type Row = Record<string, unknown>;

function cell(v: unknown, key: string): string {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") {
    if (/cost|price|eur|usd|amount|spend/i.test(key)) return v.toFixed(v < 1 ? 4 : 2);
    if (/rate$|ratio/i.test(key) && v <= 1) return `${(v * 100).toFixed(1)} %`;
    return fmtNumber(v, Number.isInteger(v) ? 0 : 2);
  }
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** A table for rows whose exact columns come from the server (usage, costs, statements). */
export function DataTable({ rows, label, columns, hide = [] }: { rows: Row[]; label: string; columns?: string[]; hide?: string[] }) {
  // Columns the server left empty in every row (dimensions not grouped by) are not shown.
  const cols = (columns ?? Array.from(new Set(rows.flatMap((r) => Object.keys(r)))))
    .filter((c) => !hide.includes(c))
    .filter((c) => rows.some((r) => r[c] !== null && r[c] !== undefined));
  return (
    <div className="table-wrap">
      <table aria-label={label}>
        <thead>
          <tr>{cols.map((c) => <th key={c} scope="col" className={typeof rows[0]?.[c] === "number" ? "num" : undefined}>{humanize(c)}</th>)}</tr>
        </thead>
        <tbody>
          {rows.map((r, n) => (
            <tr key={n}>{cols.map((c) => <td key={c} className={typeof r[c] === "number" ? "num" : undefined}>{cell(r[c], c)}</td>)}</tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
