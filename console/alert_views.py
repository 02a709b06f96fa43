"""The alert screens' actions and the alert page: acknowledge, assign, resolve, show one.

Acknowledging here calls `handlers.acknowledge.record_acknowledgement`, the one operation the SMS
link and the `ACK` reply end in, so it stops the same escalation chain with the same audit trail.
`console.views.Console` adds the other pages and registers the routes.
"""

from __future__ import annotations

import re
from typing import Any

from common.clock import iso
from console import enrollment, queries
from console.audit import audit
from console.web import Ctx, Web
from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from handlers.acknowledge import record_acknowledgement
from handlers.alerting import close
from handlers.messaging import Messaging
from runtime.bootstrap import Services
from runtime.http_app import Response

CLINICAL = ("nurse", "physician", "care-manager", "admin")
OUTCOMES = ("contacted-patient", "medication-change", "no-action")


class AlertViews:
    """The console's alert actions, and what every console view shares: the services, the web
    plumbing, the messaging port and the audit trail."""

    s: Services
    web: Web
    m: Messaging

    @property
    def store(self) -> Any:
        return self.s.store

    def _audit(self, ctx: Ctx, action: str, kind: str, entities: list[str], detail: str = "") -> None:
        audit(self.store, self.s.clock, actor=ctx.staff.actor, action=action, kind=kind, entities=entities,
              detail=detail)

    # -- alerts -------------------------------------------------------------------------------
    def ack(self, ctx: Ctx) -> Response:
        ids = [i for i in ctx.form.get("task", []) if re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", i)]
        if not ids:
            return self.web.redirect(f"{self.web.prefix}/inbox?notice=nothing+selected")
        done = 0
        for task_id in ids:
            result = record_acknowledgement(self.m, task_id, ctx.staff.actor)
            done += result.status == "acknowledged"
            self._audit(ctx, "acknowledge-alert", "update", [f"Task/{task_id}", f"DetectedIssue/{task_id}"],
                        detail=f"outcome {result.status}")
        back = ctx.field("back")
        if back.startswith(f"{self.web.prefix}/alerts/"):
            return self.web.redirect(back)
        return self.web.redirect(f"{self.web.prefix}/inbox?notice={done}+acknowledged")

    def assign(self, ctx: Ctx) -> Response:
        issue_id = ctx.request.route_params["id"]
        who = ctx.field("practitioner") or ctx.staff.practitioner_id
        try:
            enrollment._check_id(who, "practitioner")
            self.store.read("Practitioner", who)
            task = self.store.read("Task", issue_id)
        except (ResourceNotFound, ResourceGone):
            return self.web.text(404, "no such alert or practitioner")
        except ValueError as exc:
            return self.web.text(400, str(exc))
        task["owner"] = {"reference": f"Practitioner/{who}"}
        self.store.update(task, if_match=task["meta"]["versionId"])
        self._audit(ctx, "assign-alert", "update", [f"Task/{issue_id}", f"Practitioner/{who}"])
        return self.web.redirect(f"{self.web.prefix}/alerts/{issue_id}")

    def resolve(self, ctx: Ctx) -> Response:
        issue_id = ctx.request.route_params["id"]
        outcome, note = ctx.field("outcome"), ctx.field("note")[:500]
        if outcome not in OUTCOMES:
            return self.web.text(400, f"outcome must be one of {', '.join(OUTCOMES)}")
        try:
            issue = self.store.read("DetectedIssue", issue_id)
        except (ResourceNotFound, ResourceGone):
            return self.web.text(404, "no such alert")
        record_acknowledgement(self.m, issue_id, ctx.staff.actor)  # resolving claims it too: the chain stops
        now = self.s.clock.now()
        issue = self.store.read("DetectedIssue", issue_id)
        if issue.get("status") == "preliminary":
            # The outcome and the note are the record's, by the staff member who resolved it.
            close(self.m, issue, now, f"resolved by staff: {outcome}" + (f": {note}" if note else ""), code=outcome,
                  by={"reference": ctx.staff.actor})
            self._complete_task(issue_id, ctx.staff.actor, outcome, note, now)
        self._audit(ctx, "resolve-alert", "update", [f"DetectedIssue/{issue_id}"], detail=f"{outcome}: {note}")
        return self.web.redirect(f"{self.web.prefix}/alerts/{issue_id}")

    def _complete_task(self, task_id: str, actor: str, outcome: str, note: str, now: Any) -> None:
        for _ in range(3):  # a sweep may write the Task between our read and write
            try:
                task = self.store.read("Task", task_id)
            except (ResourceNotFound, ResourceGone):
                return  # an alert without a care-team Task
            if task.get("status") in ("completed", "cancelled"):
                return
            task["status"] = "completed"
            task["statusReason"] = {"text": outcome}
            task["lastModified"] = iso(now)
            task.setdefault("note", []).append({"authorReference": {"reference": actor}, "time": iso(now),
                                                "text": f"{outcome}: {note}" if note else outcome})
            try:
                self.store.update(task, if_match=task["meta"]["versionId"])
                return
            except PreconditionFailed:
                continue

    def alert(self, ctx: Ctx) -> Response:
        issue_id = ctx.request.route_params["id"]
        detail = queries.alert_detail(self.store, issue_id)
        if detail is None:
            return self.web.text(404, "no such alert")
        self._audit(ctx, "view-alert", "view", [f"DetectedIssue/{issue_id}",
                                                (detail.issue.get("patient") or {}).get("reference", "")])
        return self.web.render("alert.html", staff=ctx.staff, d=detail, name=queries.display_name(detail.patient),
                               state=queries.task_state(detail.task), outcomes=OUTCOMES,
                               practitioners=[p["id"] for p in search_all(self.store, "Practitioner", {})],
                               comparison=queries.comparison(detail.issue.get("detail", "")))
