import { useCallback, useEffect, useRef, useState } from "react";
import { client, onUnauthorized, typed, type Me } from "./api/client";
import { Loading } from "./components/ui";
import { href, navigate, useRoute } from "./lib/router";
import { LoginPage } from "./pages/Login";
import { OverviewPage } from "./pages/Overview";
import { InstancesPage } from "./pages/Instances";
import { InstanceDetailPage } from "./pages/InstanceDetail";
import { DeploymentsPage } from "./pages/Deployments";
import { KeysPage } from "./pages/Keys";
import { MachinesPage } from "./pages/Machines";
import { UsagePage } from "./pages/Usage";
import { ProvidersPage } from "./pages/Providers";
import { UsersPage } from "./pages/Users";

const NAV = [
  { path: "/", label: "Overview" },
  { path: "/instances", label: "Instances" },
  { path: "/deployments", label: "Deployments" },
  { path: "/keys", label: "API keys" },
  { path: "/machines", label: "Machines" },
  { path: "/usage", label: "Usage & costs" },
  { path: "/providers", label: "Providers & prices", admin: true },
  { path: "/users", label: "Users & projects", admin: true },
];

export function App() {
  const [me, setMe] = useState<Me | null | undefined>(undefined);
  const [expired, setExpired] = useState(false);
  const meRef = useRef(me);
  meRef.current = me;
  const path = useRoute();

  const loadMe = useCallback(async () => {
    const r = await typed(client.GET("/api/v1/auth/me"));
    setMe(r.ok ? r.data : null);
    if (r.ok) setExpired(false);
  }, []);

  useEffect(() => {
    void loadMe();
    return onUnauthorized(() => {
      if (meRef.current) setExpired(true); // signed in a moment ago: say why the login is back
      setMe(null);
    });
  }, [loadMe]);

  if (me === undefined) return <Loading what="Starting" />;
  if (me === null) return <LoginPage onLogin={loadMe} expired={expired} />;

  const logout = async () => {
    await typed(client.POST("/api/v1/auth/logout"));
    setMe(null);
    navigate("/");
  };

  let page;
  const detail = path.match(/^\/instances\/([0-9a-f-]{36})$/i);
  if (detail) page = <InstanceDetailPage id={detail[1]!} />;
  else if (path === "/instances") page = <InstancesPage />;
  else if (path === "/deployments") page = <DeploymentsPage />;
  else if (path === "/keys") page = <KeysPage />;
  else if (path === "/machines") page = <MachinesPage isAdmin={me.role === "admin"} />;
  else if (path === "/usage") page = <UsagePage />;
  else if (path === "/providers") page = <ProvidersPage isAdmin={me.role === "admin"} />;
  else if (path === "/users" && me.role === "admin") page = <UsersPage meId={me.id} />;
  else if (path === "/") page = <OverviewPage />;
  else page = <p>There is no page at {path}. <a href={href("/")}>Go to the overview</a>.</p>;

  const active = (p: string) => (p === "/" ? path === "/" : path.startsWith(p));

  return (
    <div className="layout">
      <a className="skip" href="#main">Skip to content</a>
      <nav className="sidebar" aria-label="Main">
        <div className="brand">Inventiv</div>
        <ul>
          {NAV.filter((n) => !n.admin || me.role === "admin").map((n) => (
            <li key={n.path}>
              <a href={href(n.path)} aria-current={active(n.path) ? "page" : undefined}>
                {n.label}
              </a>
            </li>
          ))}
        </ul>
        <div className="whoami">
          <span title={me.email}>{me.email}</span>
          <span className="role">{me.role}</span>
          <button type="button" className="secondary" onClick={logout}>
            Sign out
          </button>
        </div>
      </nav>
      <main id="main" className="content">
        {page}
      </main>
    </div>
  );
}
