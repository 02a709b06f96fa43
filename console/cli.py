"""`vigil staff|patients|enroll|devices|goals|report`: the console's work from the command line.

Same functions as the console pages (console/enrollment.py, console/billing.py, console/queries.py),
so `vigil report billing` and the billing page cannot disagree."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import date
from typing import Any

from runtime.settings import Settings


def register(sub: Any) -> None:
    staff = sub.add_parser("staff", help="console staff accounts")
    ss = staff.add_subparsers(required=True, metavar="ACTION")
    add = ss.add_parser("add", help="add (or reset) a console account")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=("nurse", "physician", "care-manager", "admin"))
    add.add_argument("--practitioner", help="the Practitioner id the account acts as (default: staff-<username>)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.set_defaults(func=_staff_add)
    ls = ss.add_parser("list", help="list console accounts")
    ls.set_defaults(func=_staff_list)

    patients = sub.add_parser("patients", help="add, list and show patients")
    ps = patients.add_subparsers(required=True, metavar="ACTION")
    pa = ps.add_parser("add", help="add a patient")
    for name in ("given", "family", "birth-date"):
        pa.add_argument(f"--{name}", required=True)
    for name, default in (("phone", ""), ("email", ""), ("language", "en-US"), ("time-zone", "America/New_York"),
                          ("quiet-hours", "21:00-08:00"), ("id", None)):
        pa.add_argument(f"--{name}", default=default)
    pa.add_argument("--sms-consent", action="store_true")
    pa.set_defaults(func=_patients_add)
    ps.add_parser("list", help="list patients (id, programs)").set_defaults(func=_patients_list)
    show = ps.add_parser("show", help="one patient with programs, devices, goals")
    show.add_argument("patient")
    show.set_defaults(func=_patients_show)

    enroll = sub.add_parser("enroll", help="enroll a patient in a program (an active CarePlan)")
    enroll.add_argument("patient")
    enroll.add_argument("program")
    enroll.add_argument("--start", type=date.fromisoformat, default=None)
    enroll.add_argument("--end", action="store_true", help="end the enrollment today instead")
    enroll.set_defaults(func=_enroll)

    devices = sub.add_parser("devices", help="register devices")
    ds = devices.add_subparsers(required=True, metavar="ACTION")
    reg = ds.add_parser("register", help="register a device (Device with identifier) to a patient")
    reg.add_argument("patient")
    reg.add_argument("identifier")
    reg.add_argument("--kind", default="")
    reg.set_defaults(func=_devices_register)

    goals = sub.add_parser("goals", help="set personal goals")
    gs = goals.add_subparsers(required=True, metavar="ACTION")
    gset = gs.add_parser("set", help="set a goal range for a metric")
    gset.add_argument("patient")
    gset.add_argument("metric")
    gset.add_argument("--low", type=float)
    gset.add_argument("--high", type=float)
    gset.set_defaults(func=_goals_set)

    report = sub.add_parser("report", help="billing and data-gap reports")
    rs = report.add_subparsers(required=True, metavar="REPORT")
    rb = rs.add_parser("billing", help="CMS RPM billing progress for a month")
    rb.add_argument("--month", required=True, help="YYYY-MM")
    rb.add_argument("--csv", action="store_true")
    rb.add_argument("--as-of", type=_instant, default=None,
                    help="judge periods as of this time (ISO 8601, e.g. 2026-11-15T18:00:00Z; default now)")
    rb.set_defaults(func=_report_billing)
    rs.add_parser("gaps", help="patients by days since their last reading").set_defaults(func=_report_gaps)


def _instant(text: str) -> Any:
    from common.clock import parse_instant

    try:
        return parse_instant(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time with a zone") from None


def _services(settings: Settings):  # noqa: ANN202
    from runtime.bootstrap import bootstrap

    return bootstrap(settings)


def _fail(message: str) -> int:
    print(f"vigil: {message}", file=sys.stderr)
    return 2


def _staff_add(args: argparse.Namespace, settings: Settings) -> int:
    from console.accounts import AccountError, StaffAccounts
    from console.enrollment import ensure_practitioner

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
    services = _services(settings)
    try:
        accounts = StaffAccounts(settings.path("staff.db"))
        account = accounts.add(args.username, args.role, password, args.practitioner)
        ensure_practitioner(services.store, account.practitioner_id, account.username)
    except AccountError as exc:
        return _fail(str(exc))
    finally:
        services.close()
    print(f"staff account {account.username} ({account.role}) acts as {account.actor}")
    return 0


def _staff_list(args: argparse.Namespace, settings: Settings) -> int:
    from console.accounts import StaffAccounts

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for a in StaffAccounts(settings.path("staff.db")).list():
        print(f"{a.username:<24} {a.role:<14} {a.actor}")
    return 0


def _run(settings: Settings, action: Any) -> int:
    from console.enrollment import EnrollmentError

    services = _services(settings)
    try:
        out = action(services)
    except (EnrollmentError, ValueError) as exc:
        return _fail(str(exc))
    finally:
        services.close()
    if out is not None:
        print(out if isinstance(out, str) else json.dumps(out, indent=2))
    return 0


def _patients_add(args: argparse.Namespace, settings: Settings) -> int:
    from console.enrollment import NewPatient, add_patient

    p = NewPatient(given=args.given, family=args.family, birth_date=args.birth_date, phone=args.phone,
                   email=args.email, language=args.language, time_zone=args.time_zone,
                   quiet_hours=args.quiet_hours, sms_consent=args.sms_consent)
    return _run(settings, lambda s: f"Patient/{add_patient(s.store, s.consent, p, args.id, s.clock.now())['id']}")


def _patients_list(args: argparse.Namespace, settings: Settings) -> int:
    from console.queries import display_name
    from fhirstore.paging import search_all

    def action(s: Any) -> str:
        plans: dict[str, list[str]] = {}
        for c in search_all(s.store, "CarePlan", {"status": "active"}):
            plans.setdefault(c["subject"]["reference"], []).extend(
                x.rsplit(":", 1)[-1] for x in c.get("instantiatesCanonical") or [])
        return "\n".join(f"{p['id']:<20} {display_name(p):<32} {','.join(sorted(plans.get('Patient/' + p['id'], [])))}"
                         for p in sorted(search_all(s.store, "Patient", {}), key=lambda p: p["id"])) or "no patients"
    return _run(settings, action)


def _patients_show(args: argparse.Namespace, settings: Settings) -> int:
    from fhirstore.paging import search_all

    def action(s: Any) -> dict[str, Any]:
        ref = f"Patient/{args.patient}"
        return {"patient": s.store.read("Patient", args.patient),
                "careplans": search_all(s.store, "CarePlan", {"subject": ref}),
                "devices": search_all(s.store, "Device", {"patient": ref}),
                "goals": search_all(s.store, "Goal", {"subject": ref}),
                "careteams": search_all(s.store, "CareTeam", {"subject": ref})}
    return _run(settings, action)


def _enroll(args: argparse.Namespace, settings: Settings) -> int:
    from console.enrollment import end_enrollment, enroll, patient_today

    def action(s: Any) -> str:
        today = patient_today(s.store, args.patient, s.clock.now())  # the patient's date, not UTC's
        if args.end:
            from runtime.bootstrap import messaging

            plan = end_enrollment(s.store, args.patient, args.program, today, rulesets=s.rulesets,
                                  messaging=messaging(s))
            return f"CarePlan/{plan['id']} ended"
        return f"CarePlan/{enroll(s.store, s.rulesets, args.patient, args.program, args.start or today)['id']}"
    return _run(settings, action)


def _devices_register(args: argparse.Namespace, settings: Settings) -> int:
    from console.enrollment import register_device

    return _run(
        settings, lambda s: f"Device/{register_device(s.store, args.patient, args.identifier, args.kind)['id']}"
    )


def _goals_set(args: argparse.Namespace, settings: Settings) -> int:
    from console.enrollment import set_goal

    return _run(settings, lambda s: "Goal/" + set_goal(s.store, args.patient, args.metric, args.low, args.high,
                                                       s.clock.now().date())["id"])


def _report_billing(args: argparse.Namespace, settings: Settings) -> int:
    from console.billing import billing_csv, billing_report

    def action(s: Any) -> str:
        rows = billing_report(s.store, args.month, args.as_of or s.clock.now())
        if args.csv:
            return billing_csv(rows, args.month).rstrip("\n")
        lines = [f"{'patient':<20} {'set-up':<10} {'device days':>11} {'minutes':>7}  codes"]
        for r in rows:
            cur = r.period
            lines.append(f"{r.patient_id:<20} {r.setup.isoformat():<10} {cur.days if cur else 0:>11} {r.minutes:>7}  "
                         f"{' '.join(r.codes) or '-'}")
        return "\n".join(lines)
    return _run(settings, action)


def _report_gaps(args: argparse.Namespace, settings: Settings) -> int:
    from console.queries import data_gaps

    def action(s: Any) -> str:
        rows = data_gaps(s.store, s.clock.now(), s.rulesets)
        return "\n".join(f"{r.days_since if r.days_since is not None else 'never':>6}  {r.patient_id:<20} {r.program}"
                         for r in rows) or "no enrolled patients"
    return _run(settings, action)
