import { useState, type FormEvent } from "react";
import { client, typed } from "../api/client";
import { Empty, Guard, Notice, PageHeader } from "../components/ui";
import { PROVIDERS_PATH, TYPES_PATH, useInstanceTypes, useProviderKinds, useProviders, type InstanceType } from "../lib/catalog";
import { fmtMoney, fmtNumber } from "../lib/format";

// Where a price comes from (the API's price_source): who would change it at the next sync.
const PRICE_SOURCES: Record<string, { label: string; tone: string; title: string }> = {
  "provider-api": { label: "Provider API", tone: "badge-ok", title: "Read from the provider's own catalogue at the last sync; refreshed at the next" },
  static: { label: "Static table", tone: "badge-muted", title: "Inventiv's built-in list price (the provider's API has none, or could not be read); refreshed at the next sync" },
  manual: { label: "Manual", tone: "badge-info", title: "Set by an administrator; a sync never changes it" },
};

function PriceSource({ source }: { source: string }) {
  const known = PRICE_SOURCES[source] ?? { label: source, tone: "badge-muted", title: source };
  return <span className={`badge ${known.tone}`} title={known.title}>{known.label}</span>;
}

export function ProvidersPage({ isAdmin }: { isAdmin: boolean }) {
  const providers = useProviders();
  const kinds = useProviderKinds();
  const types = useInstanceTypes();
  const [notice, setNotice] = useState<{ tone: "ok" | "bad"; text: string } | null>(null);
  const [prices, setPrices] = useState<Record<string, string>>({});
  const [newProvider, setNewProvider] = useState<{ name: string; kind: string }>({ name: "", kind: "local" });

  const savePrice = async (t: InstanceType) => {
    const value = Number(prices[t.id]);
    if (!(value >= 0)) {
      setNotice({ tone: "bad", text: "A price is a number of at least 0." });
      return;
    }
    const r = await typed(client.PATCH("/api/v1/providers/{provider_id}/instance-types/{type_id}", {
      params: { path: { provider_id: t.provider_id, type_id: t.id } },
      body: { price_per_hour: value },
    }));
    setNotice(r.ok ? { tone: "ok", text: `Price of ${t.name} set to ${fmtMoney(value, t.currency)}/h.` } : { tone: "bad", text: r.message });
    if (r.ok) {
      setPrices((p) => { const n = { ...p }; delete n[t.id]; return n; });
      void types.reload();
    }
  };

  const addProvider = async (e: FormEvent) => {
    e.preventDefault();
    const r = await typed(client.POST("/api/v1/providers", { body: { name: newProvider.name.trim(), kind: newProvider.kind, enabled: true, volume_price_per_gb_month: 0, volume_currency: "EUR" } }));
    setNotice(r.ok ? { tone: "ok", text: `Provider ${newProvider.name} added.` } : { tone: "bad", text: r.message });
    if (r.ok) {
      setNewProvider({ name: "", kind: "local" });
      void providers.reload();
    }
  };

  const toggle = async (id: string, name: string, enabled: boolean) => {
    const r = await typed(client.PATCH("/api/v1/providers/{provider_id}", { params: { path: { provider_id: id } }, body: { enabled } }));
    setNotice(r.ok ? { tone: "ok", text: `${name} ${enabled ? "enabled" : "disabled"}.` } : { tone: "bad", text: r.message });
    void providers.reload();
  };

  const sync = async (id: string, name: string) => {
    const r = await typed(client.POST("/api/v1/providers/{provider_id}/instance-types/sync", { params: { path: { provider_id: id } } }));
    const live = r.ok ? r.data.filter((t) => t.price_source === "provider-api").length : 0;
    setNotice(r.ok ? { tone: "ok", text: `${name}: ${r.data.length} instance types after syncing the catalogue (${live} priced from the provider's API).` } : { tone: "bad", text: r.message });
    void types.reload();
    void providers.reload();
  };

  return (
    <>
      <PageHeader title="Providers and prices" />
      {!isAdmin && <Notice tone="bad">Only administrators can change providers and prices.</Notice>}
      {notice && <Notice tone={notice.tone} onClose={() => setNotice(null)}>{notice.text}</Notice>}
      <section className="card" aria-labelledby="providers-title">
        <h2 id="providers-title">Providers</h2>
        <Guard res={providers} what="Providers" path={`GET ${PROVIDERS_PATH}`}>
          {(list) => list.length === 0 ? <Empty>No providers configured.</Empty> : (
            <div className="table-wrap">
              <table aria-label="Providers">
                <thead><tr><th scope="col">Name</th><th scope="col">Kind</th><th scope="col">Status</th><th scope="col">Instance types</th><th scope="col"><span className="sr-only">Actions</span></th></tr></thead>
                <tbody>
                  {list.map((p) => (
                    <tr key={p.id}>
                      <td>{p.name}</td>
                      <td>{p.kind}</td>
                      <td>{p.enabled === false ? <span className="badge badge-muted">Disabled</span> : <span className="badge badge-ok">Enabled</span>}</td>
                      <td>{p.instance_types}</td>
                      <td className="row-actions">
                        {isAdmin && (
                          <button type="button" className="secondary" onClick={() => sync(p.id, p.name)} aria-label={`Sync catalogue of ${p.name}`}>
                            Sync catalogue
                          </button>
                        )}
                        {isAdmin && (
                          <button type="button" className="secondary" onClick={() => toggle(p.id, p.name, p.enabled === false)}>
                            {p.enabled === false ? "Enable" : "Disable"}
                          </button>
                        )}
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </Guard>
        {isAdmin && !providers.notAvailable && (
          <form className="inline-form" onSubmit={addProvider} aria-label="Add a provider">
            <label htmlFor="prov-name">Name</label>
            <input id="prov-name" required value={newProvider.name} onChange={(e) => setNewProvider({ ...newProvider, name: e.target.value })} />
            <label htmlFor="prov-kind">Kind</label>
            <select id="prov-kind" value={newProvider.kind} onChange={(e) => setNewProvider({ ...newProvider, kind: e.target.value })}>
              {(kinds.data ?? []).map((k) => (
                <option key={k.kind} value={k.kind} title={k.reason ?? undefined}>
                  {k.title}{k.enabled ? "" : ` (off here: ${k.reason})`}
                </option>
              ))}
            </select>
            <button type="submit">Add provider</button>
          </form>
        )}
      </section>
      <section className="card" aria-labelledby="types-title">
        <h2 id="types-title">Instance types and prices</h2>
        <Guard res={types} what="Instance types" path={`GET ${TYPES_PATH}`}>
          {(list) => list.length === 0 ? <Empty>No instance types.</Empty> : (
            <div className="table-wrap">
              <table aria-label="Instance types">
                <thead><tr><th scope="col">Provider</th><th scope="col">Type</th><th scope="col">GPU</th><th scope="col" className="num">GPU memory</th><th scope="col" className="num">vCPU / RAM</th><th scope="col" className="num">Price per hour</th><th scope="col">Price source</th></tr></thead>
                <tbody>
                  {list.map((t) => (
                    <tr key={t.id}>
                      <td>{providers.data?.find((p) => p.id === t.provider_id)?.name ?? t.provider_id.slice(0, 8)}</td>
                      <td>{t.name}</td>
                      <td>{t.gpu_count ? `${t.gpu_count}× ${t.gpu_model ?? "GPU"}` : "none"}</td>
                      <td className="num">{fmtNumber(t.gpu_memory_gb)} GB</td>
                      <td className="num">{t.vcpus ?? "—"} / {t.ram_gb !== undefined ? `${fmtNumber(t.ram_gb)} GB` : "—"}</td>
                      <td className="num">
                        {isAdmin ? (
                          <span className="price-edit">
                            <input type="number" min={0} step="0.01" aria-label={`Price per hour of ${t.name}`}
                              value={prices[t.id] ?? String(t.price_per_hour)}
                              onChange={(e) => setPrices({ ...prices, [t.id]: e.target.value })} />
                            <span>{t.currency}</span>
                            {prices[t.id] !== undefined && Number(prices[t.id]) !== t.price_per_hour && (
                              <button type="button" onClick={() => savePrice(t)} aria-label={`Save price of ${t.name}`}>Save</button>
                            )}
                          </span>
                        ) : fmtMoney(t.price_per_hour, t.currency)}
                      </td>
                      <td><PriceSource source={t.price_source} /></td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </Guard>
      </section>
    </>
  );
}
