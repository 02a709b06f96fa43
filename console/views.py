"""The console's screens and actions, registered on the ASGI app's route registry under /console:
sign-in, the inbox, patient, gaps, billing, operations and enrollment pages here; the alert actions
and the alert page in `console.alert_views`.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from common.clock import parse_instant
from common.patient_time import patient_time_zone
from console import billing, enrollment, queries
from console.accounts import StaffAccounts
from console.alert_views import CLINICAL, AlertViews
from console.audit import audit
from console.charts import svg_chart, threshold_lines
from console.web import Ctx, Web
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from handlers.pipeline_health import health
from handlers.snooze import CATEGORY as SNOOZE_CATEGORY
from handlers.snooze import snooze
from rules.enrollment import careplan_active
from runtime.bootstrap import Services, _secret_file, messaging, pipeline_deps
from runtime.http_app import Request, Response, RouteRegistry

STATIC = Path(__file__).parent / "static"
ENROLLERS = ("care-manager", "admin", "physician")
WINDOWS = (14, 30, 90)
CHART_METRICS = ("systolic_bp", "diastolic_bp", "heart_rate", "spo2", "glucose", "body_weight")


def accounts_for(services: Services) -> StaffAccounts:
    if services.staff_accounts is None:
        services.staff_accounts = StaffAccounts(services.settings.path("staff.db"))
    return services.staff_accounts


def add_console_routes(registry: RouteRegistry, services: Services, *, trust_app_service: bool | None = None,
                       prefix: str = "/console") -> None:
    """The console on `registry`. App Service Authentication headers are trusted when
    `trust_app_service` says so, or, left None, when VIGIL_CONSOLE_IDENTITY=app-service (an Azure
    front door that sets them); `vigil serve` always passes False."""
    if trust_app_service is None:
        trust_app_service = services.settings.console_identity == "app-service"
    secret = services.settings.console_secret or _secret_file(
        services.settings, "console-secret", lambda: __import__("secrets").token_urlsafe(48))
    Console(services, Web(accounts_for(services), secret, trust_app_service=trust_app_service,
                          prefix=prefix)).register(registry)


class Console(AlertViews):
    def __init__(self, services: Services, web: Web) -> None:
        self.s = services
        self.web = web
        self.m = messaging(services)

    def register(self, r: RouteRegistry) -> None:
        w = self.web
        add = r.add
        add(f"{self.web.prefix}/login", self.login, methods=("GET", "POST"), auth="anonymous", name="console-login")
        add(f"{self.web.prefix}/static/{{name}}", self.static, auth="anonymous", name="console-static")
        add(
            f"{self.web.prefix}/logout", w.page(self.logout), methods=("POST",), auth="anonymous", name="console-logout"
        )
        add(f"{self.web.prefix}/alerts/ack", w.page(self.ack, roles=CLINICAL), methods=("POST",), auth="anonymous")
        add(
            f"{self.web.prefix}/alerts/{{id}}/assign",
            w.page(self.assign, roles=CLINICAL),
            methods=("POST",),
            auth="anonymous",
        )
        add(
            f"{self.web.prefix}/alerts/{{id}}/resolve",
            w.page(self.resolve, roles=CLINICAL),
            methods=("POST",),
            auth="anonymous",
        )
        add(f"{self.web.prefix}/alerts/{{id}}", w.page(self.alert), auth="anonymous", name="console-alert")
        add(f"{self.web.prefix}/inbox.json", w.page(self.inbox_json), auth="anonymous")
        add(f"{self.web.prefix}/patients/{{id}}", w.page(self.patient), auth="anonymous", name="console-patient")
        add(f"{self.web.prefix}/gaps", w.page(self.gaps), auth="anonymous")
        add(f"{self.web.prefix}/billing.csv", w.page(self.billing_csv, roles=ENROLLERS), auth="anonymous")
        add(f"{self.web.prefix}/billing", w.page(self.billing, roles=ENROLLERS), auth="anonymous")
        add(f"{self.web.prefix}/snooze", w.page(self.snooze, roles=CLINICAL), methods=("POST",), auth="anonymous")
        add(f"{self.web.prefix}/time", w.page(self.log_time, roles=CLINICAL), methods=("POST",), auth="anonymous")
        add(f"{self.web.prefix}/enroll", w.page(self.enroll_page, roles=ENROLLERS), auth="anonymous")
        add(
            f"{self.web.prefix}/enroll/{{step}}",
            w.page(self.enroll_step, roles=ENROLLERS),
            methods=("POST",),
            auth="anonymous",
        )
        add(f"{self.web.prefix}/operations.json", w.page(self.operations_json), auth="anonymous")
        add(f"{self.web.prefix}/operations", w.page(self.operations), auth="anonymous")
        add("/api/operations", lambda request: self._health_json(), auth="key", name="operations")
        add(f"{self.web.prefix}/{{page?}}", w.page(self.inbox), auth="anonymous", name="console-inbox")

    # -- sign in -------------------------------------------------------------------------------
    def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._login_page(request)
        form = parse_qs(request.body.decode("utf-8", "replace"))
        if not self.web.login_csrf_ok(request, (form.get("csrf") or [""])[-1]):
            return self._login_page(request, 403, "The sign-in form expired. Please sign in again.")
        username = (form.get("username") or [""])[-1].strip().lower()
        password = (form.get("password") or [""])[-1]
        key, address = f"user:{username}", f"address:{request.client}"
        if self.web.limiter.blocked(key) or (request.client and self.web.address_limiter.blocked(address)):
            return self._login_page(request, 429, "Too many failed sign-ins. Wait a few minutes.")
        account = self.web.accounts.verify(username, password)
        if account is None:
            self.web.limiter.failed(key)
            self.web.address_limiter.failed(address)
            known = self.web.accounts.get(username)
            # A failed sign-in names the account it tried (never the password), for the audit trail.
            audit(self.store, self.s.clock, actor=known.actor if known else "", action="login-failed",
                  kind="execute", entities=[], detail=f"username {username[:64]!r}", outcome="4")
            return self._login_page(request, 401, "Wrong username or password.")
        self.web.limiter.succeeded(key)
        audit(self.store, self.s.clock, actor=account.actor, action="login", kind="execute", entities=[])
        return self.web.redirect(f"{self.web.prefix}/inbox", cookie=self.web.session_cookie(account, request))

    def _login_page(self, request: Request, status: int = 200, error: str = "") -> Response:
        token, cookie = self.web.login_form(request)
        response = self.web.render("login.html", status, csrf=token, error=error)
        response.headers["Set-Cookie"] = cookie
        return response

    def logout(self, ctx: Ctx) -> Response:
        self._audit(ctx, "logout", "execute", [])
        return self.web.redirect(f"{self.web.prefix}/login", cookie=self.web.clear_cookie())

    def static(self, request: Request) -> Response:
        name = request.route_params.get("name", "")
        types = {".css": "text/css", ".js": "text/javascript"}
        path = STATIC / name
        if not re.fullmatch(r"[a-z0-9_.-]+", name) or path.suffix not in types or not path.is_file():
            return self.web.text(404, "no such file")
        return Response(200, {"Content-Type": types[path.suffix] + "; charset=utf-8",
                              "Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"}, path.read_bytes())

    # -- inbox ---------------------------------------------------------------------------------
    def _rows(self, ctx: Ctx) -> list[queries.InboxRow]:
        return queries.inbox(self.store, self.s.rulesets, program=ctx.query("program"), severity=ctx.query("severity"),
                             status=ctx.query("status"), owner=ctx.staff.actor if ctx.query("mine") else "")

    def inbox(self, ctx: Ctx) -> Response:
        if ctx.request.route_params.get("page") not in (None, "inbox"):
            return self.web.text(404, "no such console page")
        rows = self._rows(ctx)
        # The inbox names patients: a view of each (HIPAA §164.312(b)), as the patient page is.
        self._audit(ctx, "view-inbox", "view", _patients(r.patient_id for r in rows))
        try:
            refresh_s = min(300, max(2, int(ctx.query("refresh", "15"))))
        except ValueError:
            refresh_s = 15
        return self.web.render("inbox.html", staff=ctx.staff, rows=rows, now=self.s.clock.now(),
                               programs=enrollment.program_ids(self.s.rulesets), f=ctx.request.params,
                               notice=ctx.query("notice"), signature=queries.inbox_signature(rows),
                               refresh_s=refresh_s)

    def inbox_json(self, ctx: Ctx) -> Response:
        import json

        rows = self._rows(ctx)
        # Ids and states only, no patient details: polled every few seconds, it is not a patient view.
        body = {"count": len(rows), "signature": queries.inbox_signature(rows),
                "alerts": [{"id": r.issue_id, "severity": r.severity, "status": r.status, "priority": r.priority}
                           for r in rows]}
        return Response(
            200, {"Content-Type": "application/json", "Cache-Control": "no-store"}, json.dumps(body).encode()
        )

    # -- patient -------------------------------------------------------------------------------
    def patient(self, ctx: Ctx) -> Response:
        pid = ctx.request.route_params["id"]
        try:
            patient = self.store.read("Patient", pid)
        except (ResourceNotFound, ResourceGone):
            return self.web.text(404, "no such patient")
        ref = f"Patient/{pid}"
        days = int(ctx.query("days", "14")) if ctx.query("days", "14") in {str(w) for w in WINDOWS} else 14
        now = self.s.clock.now()
        start = now - timedelta(days=days)
        plans = search_all(self.store, "CarePlan", {"subject": ref})
        tz = patient_time_zone(patient, "UTC")
        programs = {c.rsplit(":", 1)[-1] for p in plans if careplan_active(p, now, tz)
                    for c in p.get("instantiatesCanonical") or []}
        goals = search_all(self.store, "Goal", {"subject": ref})
        obs = search_all(self.store, "Observation", {"subject": ref, "date": f"ge{start.isoformat()}"})
        series: dict[str, list[tuple[Any, float]]] = {}
        for o in obs:
            when = queries.effective(o)
            for metric, value in queries.observation_values(o).items():
                if when is not None:
                    series.setdefault(metric, []).append((when, value))
        issues = search_all(self.store, "DetectedIssue", {"patient": ref})
        starts = [(i.get("identifiedPeriod") or {}).get("start") for i in issues]
        alert_times = [parse_instant(str(start)) for start in starts if start]
        charts = []
        for metric in sorted(series, key=lambda m: CHART_METRICS.index(m) if m in CHART_METRICS else 99):
            pts = sorted(series[metric])
            charts.append((queries.metric_label(metric),
                           svg_chart(metric, pts, threshold_lines(self.s.rulesets, programs, metric, goals),
                                     alert_times, start, now)))
        with_readings, window = queries.adherence(self.store, patient, now, days)
        comms = sorted(search_all(self.store, "Communication", {"subject": ref}), key=lambda c: c.get("sent", ""),
                       reverse=True)[:10]
        self._audit(ctx, "view-patient", "view", [ref])
        return self.web.render(
            "patient.html", staff=ctx.staff, p=patient, pid=pid, name=queries.display_name(patient), days=days,
            overrides={plan["id"]: queries.override_texts(plan) for plan in plans},
            contact=queries.contact_details(patient),
            windows=WINDOWS, charts=charts, plans=plans, goals=goals, adherence=(with_readings, window),
            devices=search_all(self.store, "Device", {"patient": ref}),
            teams=search_all(self.store, "CareTeam", {"subject": ref}), comms=comms, metrics=CHART_METRICS,
            snoozes=[f for f in search_all(self.store, "Flag", {"subject": ref, "category": f"{SNOOZE_CATEGORY}|snooze",
                                                                 "status": "active"})
                     if parse_instant(f["period"]["end"]) > now],
            issues=sorted(issues, key=lambda i: i["meta"]["lastUpdated"], reverse=True)[:10], now=now)

    def gaps(self, ctx: Ctx) -> Response:
        rows = queries.data_gaps(self.store, self.s.clock.now(), self.s.rulesets)
        self._audit(ctx, "view-gaps", "view", _patients(r.patient_id for r in rows))
        return self.web.render("gaps.html", staff=ctx.staff, rows=rows)

    # -- billing -------------------------------------------------------------------------------
    def _month(self, ctx: Ctx) -> str:
        month = ctx.query("month") or self.s.clock.now().strftime("%Y-%m")
        billing.month_bounds(month)
        return month

    def billing(self, ctx: Ctx) -> Response:
        try:
            month = self._month(ctx)
        except ValueError as exc:
            return self.web.text(400, str(exc))
        rows = billing.billing_report(self.store, month, self.s.clock.now())
        self._audit(ctx, "view-billing", "view", _patients(r.patient_id for r in rows), detail=month)
        return self.web.render("billing.html", staff=ctx.staff, rows=rows, month=month)

    def billing_csv(self, ctx: Ctx) -> Response:
        try:
            month = self._month(ctx)
        except ValueError as exc:
            return self.web.text(400, str(exc))
        rows = billing.billing_report(self.store, month, self.s.clock.now())
        self._audit(ctx, "export-billing", "view", _patients(r.patient_id for r in rows), detail=month)
        return Response(200, {"Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
                              "Content-Disposition": f'attachment; filename="billing-{month}.csv"'},
                        billing.billing_csv(rows, month).encode())

    def log_time(self, ctx: Ctx) -> Response:
        pid = ctx.field("patient")
        try:
            minutes = int(ctx.field("minutes", "0"))
            enc = billing.log_time(
                self.store,
                self.s.clock,
                patient_id=enrollment._check_id(pid, "patient"),
                actor=ctx.staff.actor,
                minutes=minutes,
                interactive=ctx.field("interactive") == "yes",
                note=ctx.field("note"),
                alert=ctx.field("alert") or None,
            )
        except ValueError as exc:
            return self.web.text(400, str(exc))
        self._audit(ctx, "log-time", "create", [f"Patient/{pid}", f"Encounter/{enc.get('id')}"])
        return self.web.redirect(f"{self.web.prefix}/patients/{pid}")

    def snooze(self, ctx: Ctx) -> Response:
        pid = ctx.field("patient")
        try:
            enrollment._check_id(pid, "patient")
            if ctx.field("metric") not in CHART_METRICS:
                raise ValueError(f"metric: one of {', '.join(CHART_METRICS)}")
            flag = snooze(self.store, f"Patient/{pid}", ctx.field("metric"), ctx.field("direction"),
                          float(ctx.field("hours", "0") or 0), self.s.clock.now(), ctx.staff.actor)
        except ValueError as exc:
            return self.web.text(400, str(exc))
        self._audit(ctx, "snooze", "create", [f"Patient/{pid}", f"Flag/{flag['id']}"], detail=flag["code"]["text"])
        return self.web.redirect(f"{self.web.prefix}/patients/{pid}")

    # -- operations ----------------------------------------------------------------------------
    def operations(self, ctx: Ctx) -> Response:
        return self.web.render("operations.html", staff=ctx.staff, h=health(pipeline_deps(self.s)))

    def operations_json(self, ctx: Ctx) -> Response:
        return self._health_json()

    def _health_json(self) -> Response:
        import json

        return Response(200, {"Content-Type": "application/json", "Cache-Control": "no-store"},
                        json.dumps(health(pipeline_deps(self.s))).encode())

    # -- enrollment ----------------------------------------------------------------------------
    def enroll_page(self, ctx: Ctx, error: str = "", done: str = "", status: int = 200) -> Response:
        return self.web.render("enroll.html", status, staff=ctx.staff, error=error, done=done,
                               programs=enrollment.program_ids(self.s.rulesets), roles=enrollment.CARE_TEAM_ROLES,
                               rules=[(rs.program.id, r.id, sorted(r.params)) for rs in self.s.rulesets
                                      for r in rs.rules],
                               practitioners=[p["id"] for p in search_all(self.store, "Practitioner", {})],
                               form=ctx.form, today=self.s.clock.now().date().isoformat())

    def enroll_step(self, ctx: Ctx) -> Response:
        step = ctx.request.route_params["step"]
        f = ctx.field
        today = self.s.clock.now().date()
        try:
            if step == "patient":
                res = enrollment.add_patient(self.store, self.s.consent, enrollment.NewPatient(
                    given=f("given"), family=f("family"), birth_date=f("birth_date"), phone=f("phone"),
                    email=f("email"), language=f("language", "en-US"), time_zone=f("time_zone"),
                    quiet_hours=f("quiet_hours", "21:00-08:00"), sms_consent=f("sms_consent") == "yes"),
                    now=self.s.clock.now())
            elif step == "program":
                start = f("start")
                res = enrollment.enroll(self.store, self.s.rulesets, f("patient"), f("program"),
                                        date.fromisoformat(start) if start else
                                        enrollment.patient_today(self.store, f("patient"), self.s.clock.now()))
            elif step == "end":
                res = enrollment.end_enrollment(self.store, f("patient"), f("program"),
                                                enrollment.patient_today(self.store, f("patient"), self.s.clock.now()),
                                                rulesets=self.s.rulesets, messaging=self.m)
            elif step == "override":
                res = enrollment.set_override(self.store, self.s.rulesets, f("patient"), f("program"), f("rule"),
                                              param=f("param"), value=f("value"), disabled=f("disabled") == "yes",
                                              clear=f("clear") == "yes", now=self.s.clock.now())
            elif step == "device":
                res = enrollment.register_device(self.store, f("patient"), f("identifier"), f("kind"))
            elif step == "goal":
                res = enrollment.set_goal(self.store, f("patient"), f("metric"), _num(f("low")), _num(f("high")), today)
            elif step == "careteam":
                res = enrollment.assign_care_team(self.store, f("patient"),
                                                  {r: f(r) for r in enrollment.CARE_TEAM_ROLES})
            else:
                return self.web.text(404, "no such enrollment step")
        except ValueError as exc:  # EnrollmentError and bad dates/numbers
            return self.enroll_page(ctx, error=str(exc), status=400)
        ref = f"{res['resourceType']}/{res['id']}"
        subject = res.get("subject") or res.get("patient") or {"reference": ref}
        self._audit(ctx, f"enroll-{step}", "update", [ref, subject.get("reference", ref)])
        return self.enroll_page(ctx, done=ref)


def _patients(ids: Any) -> list[str]:
    """Each patient a page shows, once, in the order shown."""
    return [f"Patient/{pid}" for pid in dict.fromkeys(ids) if pid]


def _num(text: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise enrollment.EnrollmentError(f"goal: {text!r} is not a number") from None
