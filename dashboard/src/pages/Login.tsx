import { useState, type FormEvent } from "react";
import { client, typed } from "../api/client";

export function LoginPage({ onLogin, expired = false }: { onLogin: () => Promise<void>; expired?: boolean }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    const r = await typed(client.POST("/api/v1/auth/login", { body: { email, password } }));
    setBusy(false);
    if (!r.ok) {
      setError(r.status === 401 ? "Wrong e-mail or password." : r.message);
      return;
    }
    await onLogin();
  };

  return (
    <main className="login">
      <form onSubmit={submit} aria-labelledby="login-title" className="card">
        <h1 id="login-title">Sign in to Inventiv</h1>
        {expired && <div className="notice notice-bad" role="status">Your session has expired: please sign in again.</div>}
        <label htmlFor="email">E-mail</label>
        <input id="email" type="email" autoComplete="username" required value={email}
          onChange={(e) => setEmail(e.target.value)} />
        <label htmlFor="password">Password</label>
        <input id="password" type="password" autoComplete="current-password" required value={password}
          onChange={(e) => setPassword(e.target.value)} />
        {error && <div className="error-box" role="alert">{error}</div>}
        <button type="submit" disabled={busy}>{busy ? "Signing in…" : "Sign in"}</button>
      </form>
    </main>
  );
}
