"""The operator commands of `inventiv`, over the REST API (what the dashboard does, from a shell).

`inventiv login` keeps the session token in $XDG_CONFIG_HOME/inventiv/credentials.json (mode
0600); every other command uses it. `--json` prints the API's answer for scripts. Exit codes
(EXIT_CODES) are stable so scripts can branch on them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx

OK, ERROR, USAGE, AUTH, NOT_FOUND, CONFLICT, UNAVAILABLE = 0, 1, 2, 3, 4, 5, 6
EXIT_CODES = {
    OK: "success",
    ERROR: "any other error (the API refused or failed; the message says why)",
    USAGE: "bad command line or values the API rejected (400, 422)",
    AUTH: "not logged in, session expired, or not allowed (401, 403)",
    NOT_FOUND: "no such deployment, instance or key (404)",
    CONFLICT: "the state forbids it, e.g. terminating a terminated instance (409)",
    UNAVAILABLE: "the API cannot be reached or a dependency is down (503, connection error)",
}
_BY_STATUS = {400: USAGE, 422: USAGE, 401: AUTH, 403: AUTH, 404: NOT_FOUND, 409: CONFLICT}
# Where following an instance stops, and whether that is a success.
_SETTLED = {"ready": OK, "terminated": OK, "archived": OK, "startup_failed": ERROR}
_SETTLED |= {"provider_deleted": ERROR}
# Following a drain or a terminate: the instance is still ready when the request is accepted.
_ENDED = {state: code for state, code in _SETTLED.items() if state != "ready"}


class CliError(Exception):
    def __init__(self, message: str, code: int = ERROR) -> None:
        super().__init__(message)
        self.code = code


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "inventiv" / "credentials.json"


@dataclass
class Credentials:
    api_url: str
    token: str
    email: str

    @classmethod
    def load(cls) -> Credentials:
        path = config_path()
        try:
            data = json.loads(path.read_text())
            return cls(data["api_url"], data["token"], data["email"])
        except FileNotFoundError:
            raise CliError("not logged in: run `inventiv login`", AUTH) from None
        except (ValueError, KeyError):
            raise CliError(f"{path} is damaged: run `inventiv login` again", AUTH) from None

    def save(self) -> Path:
        """Owner-only: the folder 0700, the file created 0600 before anything is written."""
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"api_url": self.api_url, "token": self.token, "email": self.email}, f)
        tmp.replace(path)
        return path


class Api:
    """The REST API with the saved session; HTTP errors become CliError with an exit code."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        self.http = httpx.Client(
            base_url=creds.api_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {creds.token}"},
            timeout=30,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            message = f"cannot reach the API at {self.creds.api_url}: {exc}"
            raise CliError(message, UNAVAILABLE) from exc
        check(response)
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def events(self) -> Iterator[dict[str, Any]]:
        """Live events (SSE); yields {} for each keep-alive so callers can re-check."""
        try:
            with self.http.stream("GET", "/events", timeout=httpx.Timeout(30, read=None)) as r:
                check(r)
                yield {}
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        yield json.loads(line[5:])
                    elif line.startswith(":"):
                        yield {}
        except httpx.HTTPError as exc:
            raise CliError(f"the event stream broke: {exc}", UNAVAILABLE) from exc


def check(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    code = _BY_STATUS.get(response.status_code, UNAVAILABLE if response.status_code >= 502 else 1)
    if response.status_code == 401:
        detail += " (run `inventiv login`)"
    raise CliError(f"{response.status_code}: {detail}", code)


# ---------------------------------------------------------------- output


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2) if args.json else text())


def details(obj: dict[str, Any], keys: list[str]) -> str:
    width = max(len(k) for k in keys)
    return "\n".join(f"{k.ljust(width)}  {_cell(obj.get(k))}" for k in keys)


def progress_line(instance: dict[str, Any], width: int = 30) -> str:
    pct = int(instance.get("progress") or 0)
    filled = width * pct // 100
    step = instance.get("current_step") or instance["state"]
    return f"[{'#' * filled}{'-' * (width - filled)}] {pct:3d}%  {instance['state']}: {step}"


# ---------------------------------------------------------------- commands


def cmd_login(args: argparse.Namespace) -> int:
    email = args.email or input("e-mail: ")
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass()
    url = args.api_url.rstrip("/")
    try:
        response = httpx.post(
            f"{url}/api/v1/auth/login", json={"email": email, "password": password}, timeout=30
        )
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the API at {url}: {exc}", UNAVAILABLE) from exc
    check(response)
    path = Credentials(url, response.json()["access_token"], email).save()
    emit(
        args,
        {"email": email, "api_url": url, "credentials": str(path)},
        lambda: f"logged in as {email} at {url} (session kept in {path})",
    )
    return OK


def cmd_logout(args: argparse.Namespace) -> int:
    path = config_path()
    if path.exists():
        try:
            Api(Credentials.load()).call("POST", "/auth/logout")
        except CliError as exc:
            if exc.code not in (AUTH, UNAVAILABLE):
                raise
        path.unlink()
    emit(args, {"logged_out": True}, lambda: "logged out")
    return OK


DEPLOYMENT_COLUMNS = ["id", "name", "served_name", "provider", "live_instances", "max_instances"]


def resolve_deployment(api: Api, ref: str) -> dict[str, Any]:
    """A deployment by id, name or served name."""
    if _is_uuid(ref):
        return api.get(f"/deployments/{ref}")  # type: ignore[no-any-return]
    found = [d for d in api.get("/deployments") if ref in (d["name"], d["served_name"])]
    if len(found) != 1:
        what = "no deployment" if not found else f"{len(found)} deployments"
        raise CliError(f"{what} named {ref!r}", NOT_FOUND if not found else USAGE)
    return found[0]


def cmd_deployments(args: argparse.Namespace, api: Api) -> int:
    if args.action == "list":
        rows = api.get("/deployments")
        emit(args, rows, lambda: table(rows, [*DEPLOYMENT_COLUMNS, "autoscaling_enabled"]))
    else:
        d = resolve_deployment(api, args.ref)
        keys = [*DEPLOYMENT_COLUMNS, "model", "flavor", "min_instances", "autoscaling_enabled"]
        emit(args, d, lambda: details(d, [*keys, "routing", "engine_args", "created_at"]))
    return OK


INSTANCE_COLUMNS = ["id", "state", "progress", "current_step", "ip_address", "created_at"]


def cmd_instances(args: argparse.Namespace, api: Api) -> int:
    if args.action == "list":
        deployment = resolve_deployment(api, args.deployment)["id"] if args.deployment else None
        page = api.get("/instances", deployment_id=deployment, state=args.state, limit=args.limit)
        emit(args, page, lambda: table(page["items"], INSTANCE_COLUMNS))
        return OK
    if args.action == "provision":
        deployment = resolve_deployment(api, args.ref)
        created = api.call("POST", f"/deployments/{deployment['id']}/instances")
        if args.follow:
            if not args.json:
                print(f"instance {created['id']} of {deployment['name']}")
            return follow(api, created["id"], args.json)
        emit(args, created, lambda: f"instance {created['id']} provisioning ({deployment['name']})")
        return OK
    instance_id = args.ref
    if args.action == "show":
        d = api.get(f"/instances/{instance_id}")
        keys = ["id", "state", "progress", "current_step", "provider", "instance_type", "zone"]
        keys += ["ip_address", "agent_version", "error", "created_at", "ready_at"]
        emit(args, d, lambda: details(d, [*keys, "terminated_at", "termination_reason"]))
    elif args.action in ("drain", "terminate"):
        path = f"/instances/{instance_id}" + ("/drain" if args.action == "drain" else "")
        accepted = api.call("POST" if args.action == "drain" else "DELETE", path)
        if args.follow:
            return follow(api, instance_id, args.json, to_the_end=True)
        emit(args, accepted, lambda: f"{args.action} of {instance_id} accepted")
    elif args.action == "follow":
        return follow(api, instance_id, args.json)
    elif args.action == "log":
        return action_log(api, instance_id, args.json, args.follow)
    return OK


def follow(api: Api, instance_id: str, as_json: bool, *, to_the_end: bool = False) -> int:
    """Progress 0-100 % with the current step, redrawn on each event of the instance, until
    it settles (ready, terminated or failed; with `to_the_end`, not at ready)."""
    settled = _ENDED if to_the_end else _SETTLED
    tty = sys.stdout.isatty() and not as_json
    last = None
    for event in api.events():
        if event and instance_id not in json.dumps(event.get("data", {})):
            continue
        instance = api.get(f"/instances/{instance_id}")
        shown = (instance["state"], instance["progress"], instance["current_step"])
        if shown != last:
            last = shown
            if as_json:
                print(
                    json.dumps(dict(zip(("state", "progress", "current_step"), shown, strict=True)))
                )
            else:
                print(("\r" if tty else "") + progress_line(instance), end="" if tty else "\n")
            sys.stdout.flush()
        if instance["state"] in settled:
            if tty:
                print()
            if instance.get("error") and not as_json:
                print(f"error: {instance['error']}", file=sys.stderr)
            return settled[instance["state"]]
    raise CliError("the event stream ended", UNAVAILABLE)


ACTION_COLUMNS = ["started_at", "step", "status", "duration_ms", "detail", "error"]


def action_log(api: Api, instance_id: str, as_json: bool, keep_following: bool) -> int:
    seen: set[tuple[str, str, str]] = set()

    def show_new(actions: list[dict[str, Any]]) -> None:
        new = [a for a in actions if (a["started_at"], a["step"], a["status"]) not in seen]
        seen.update((a["started_at"], a["step"], a["status"]) for a in new)
        if as_json:
            for a in new:
                print(json.dumps(a))
        elif new:
            lines = table(new, ACTION_COLUMNS).splitlines()
            print("\n".join(lines if len(seen) == len(new) else lines[1:]))
        sys.stdout.flush()

    if not keep_following:
        show_new(api.get(f"/instances/{instance_id}")["actions"])
        return OK
    for event in api.events():
        if event and instance_id not in json.dumps(event.get("data", {})):
            continue
        instance = api.get(f"/instances/{instance_id}")
        show_new(instance["actions"])
        if instance["state"] in ("terminated", "archived", "provider_deleted"):
            return OK
    raise CliError("the event stream ended", UNAVAILABLE)


def cmd_keys(args: argparse.Namespace, api: Api) -> int:
    columns = ["id", "name", "prefix", "rpm_limit", "tpm_limit", "last_used_at", "revoked_at"]
    if args.action == "list":
        rows = api.get("/keys", include_revoked=args.all or None)
        emit(args, rows, lambda: table(rows, columns))
    else:
        key = api.get(f"/keys/{args.ref}")
        emit(args, key, lambda: details(key, [*columns, "project_id", "created_at"]))
    return OK


def cmd_usage(args: argparse.Namespace, api: Api) -> int:
    report = api.get("/usage", start=args.start, end=args.end, group_by=args.group_by)
    columns = [*args.group_by, "requests", "errors", "input_tokens", "output_tokens"]
    columns = [{"key": "api_key_name", "project": "project_id"}.get(c, c) for c in columns]
    emit(
        args,
        report,
        lambda: (
            table(report["rows"], columns)
            + (
                f"\ntotal: {report['requests']} requests, {report['errors']} errors, "
                f"{report['input_tokens']} input and {report['output_tokens']} output tokens"
            )
        ),
    )
    return OK


def cmd_costs(args: argparse.Namespace, api: Api) -> int:
    report = api.get("/costs", start=args.start, end=args.end, group_by=args.group_by)
    names = {"project": "project_id", "deployment": "deployment_name", "instance": "instance_id"}
    columns = [names.get(c, c) for c in args.group_by] + ["instance_hours", "cost", "currency"]
    totals = ", ".join(f"{t['amount']:.2f} {t['currency']}" for t in report["totals"]) or "0"
    rate = ", ".join(f"{t['amount']:.2f} {t['currency']}/h" for t in report["spend_rate_per_hour"])
    emit(
        args,
        report,
        lambda: (
            table(report["rows"], columns) + (f"\ntotal: {totals}; spending now: {rate or '0/h'}")
        ),
    )
    return OK


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- parser


def add_commands(sub: Any) -> None:
    """The operator commands, on the `inventiv` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    login = sub.add_parser("login", parents=[common], help="log in to the API once")
    login.add_argument("--api-url", default="http://localhost:8000", help="the API's base URL")
    login.add_argument("--email")
    login.add_argument("--password-stdin", action="store_true", help="read the password on stdin")
    login.set_defaults(run=cmd_login)
    sub.add_parser("logout", parents=[common], help="end the session").set_defaults(run=cmd_logout)

    dep = sub.add_parser("deployments", parents=[common], help="list or show deployments")
    dep_actions = dep.add_subparsers(dest="action", required=True)
    dep_actions.add_parser("list", parents=[common])
    dep_actions.add_parser("show", parents=[common]).add_argument("ref", help="id or name")
    dep.set_defaults(run=with_api(cmd_deployments))

    inst = sub.add_parser("instances", parents=[common], help="instances: list, provision, …")
    ia = inst.add_subparsers(dest="action", required=True)
    listing = ia.add_parser("list", parents=[common])
    listing.add_argument("--deployment", help="id or name")
    listing.add_argument("--state")
    listing.add_argument("--limit", type=int, default=50)
    provision = ia.add_parser("provision", parents=[common], help="start a new instance")
    provision.add_argument("ref", help="deployment id or name")
    provision.add_argument("--follow", action="store_true", help="then follow its progress")
    for action, what in (
        ("show", "details"),
        ("drain", "stop routing to it, then terminate"),
        ("terminate", "drain if serving, then delete at the provider"),
        ("follow", "live progress until it settles"),
        ("log", "the action log"),
    ):
        p = ia.add_parser(action, parents=[common], help=what)
        p.add_argument("ref", help="instance id")
        if action in ("drain", "terminate", "log"):
            p.add_argument("--follow", action="store_true", help="keep following")
    inst.set_defaults(run=with_api(cmd_instances))

    keys = sub.add_parser("keys", parents=[common], help="list or show API keys")
    ka = keys.add_subparsers(dest="action", required=True)
    ka.add_parser("list", parents=[common]).add_argument(
        "--all", action="store_true", help="revoked keys too"
    )
    ka.add_parser("show", parents=[common]).add_argument("ref", help="key id")
    keys.set_defaults(run=with_api(cmd_keys))

    for name, run, dims, default in (
        ("usage", cmd_usage, ["day", "project", "key", "model", "deployment"], ["model"]),
        ("costs", cmd_costs, ["day", "project", "deployment", "instance"], ["deployment"]),
    ):
        report = sub.add_parser(name, parents=[common], help=f"{name} as a table")
        report.add_argument("--start", help="from (ISO date or time; default: 30 days ago)")
        report.add_argument("--end", help="until (default: now)")
        report.add_argument("--group-by", nargs="+", choices=dims, default=default)
        report.set_defaults(run=with_api(run))


def with_api(command: Callable[[argparse.Namespace, Api], int]) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        return command(args, Api(Credentials.load()))

    return run


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.run(args))
    except CliError as exc:
        fail(str(exc), exc.code)
    except KeyboardInterrupt:
        return 130


def fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
