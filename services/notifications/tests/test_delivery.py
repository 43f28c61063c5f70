"""The notifications service layer on a real SQLite database, with the
default rules, a fixed clock, and senders that keep what they are given:
who hears what on which channel, once; fallbacks; caps; quiet hours; the
climb of an unacknowledged notice and its end on acknowledgement."""
import base64
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from services.notifications.adapters import orm
from services.notifications.adapters.channels.base import Outgoing, PermanentRejection, Receipt, TransientFailure
from services.notifications.domain import acks
from services.notifications.domain.model import DeliveryFailed
from services.notifications.domain.rules import RulesHolder
from services.notifications.service import RULES_FILE
from services.notifications.service_layer import handlers
from services.notifications.service_layer.unit_of_work import UnitOfWork

ORG = "00000000-0000-0000-0000-00000000000a"
CASE = "00000000-0000-0000-0000-0000000000c1"
T0 = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)  # 10:00 in Lima
KEYS = acks.AckKeys.parse("1:" + base64.urlsafe_b64encode(b"k" * 32).decode())


class Sender:
    """Keeps what it is given; ``answers`` queues exceptions to raise first."""

    def __init__(self, channel):
        self.channel, self.sent, self.answers = channel, [], []

    def send(self, address, message, *, key):
        if self.answers:
            raise self.answers.pop(0)
        self.sent.append((address, message, key))
        return Receipt("250" if self.channel == "email" else "201")

    def close(self, *, polite=True):
        pass


class Texts:
    def render(self, kind, channel, locale, *, fallback_locale, values):
        return Outgoing(channel=channel, subject=f"{kind}:{locale}", text=f"{kind} {values['case_code']}",
                        kind=kind, case_code=values["case_code"], link=values.get("ack_link"))


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def world(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/n.db")
    orm.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    clock = Clock()
    senders = {c: Sender(c) for c in ("email", "sms", "whatsapp", "webhook")}
    env = handlers.Env(rules=RulesHolder(RULES_FILE, on_error=print), renderer=Texts(), senders=senders,
                       ack_keys=KEYS, public_url="https://w.test", now=clock)
    with sessions() as s:
        uow = UnitOfWork(s)
        uow.project_organization(ORG, {"timezone": "America/Lima", "language": "es", "revision": 1, "code": "CEC"})
        uow.project_member(ORG, member("pres", ["president"], phone="+51900000001", whatsapp_opt_in=True))
        uow.project_member(ORG, member("lead", ["case_lead"], phone="+51900000002"))
        uow.project_member(ORG, member("focal", ["focal_point"], language="en"))
        uow.project_member("00000000-0000-0000-0000-0000000000bb",
                           member("sup", ["supervisor"], supervised_organization_ids=[ORG]))
        uow.commit()

    class World:
        pass

    w = World()
    w.sessions, w.env, w.clock, w.senders = sessions, env, clock, senders
    w.handle = lambda event: handlers.handle_event(UnitOfWork(sessions()), env, event, f"handle_{event['type']}")
    yield w
    engine.dispose()


def member(member_id, roles, revision=1, **changes):
    return {"member_id": member_id, "name": member_id, "email": f"{member_id}@test.invalid", "phone": None,
            "language": "es", "roles": roles, "active": True, "supervised_organization_ids": [],
            "revision": revision, **changes}


def event(kind, data, at=T0):
    return {"event_id": str(uuid.uuid4()), "type": kind, "version": 1, "occurred_at": at,
            "organization_id": ORG, "case_id": CASE, "data": data}


def opened(world, risk=None):
    world.handle(event("case_opened", {"survivor_code": "CEC-2026-0001", "opened_by": "focal",
                                       "opened_at": T0, "risk_level": risk}))
    world.handle(event("case_lead_assigned", {"case_lead_id": "lead", "assigned_by": "pres"}))


def sent(world):
    return sorted((channel, key.split(":")[1]) for channel, s in world.senders.items() for _, _, key in s.sent)


def test_a_new_case_is_emailed_to_the_president_once_even_if_the_event_comes_again(world):
    e = event("case_opened", {"survivor_code": "CEC-2026-0001", "opened_by": "focal", "opened_at": T0})
    assert world.handle(e) is True
    assert world.handle(e) is False
    assert sent(world) == [("email", "pres")]


def test_a_high_risk_case_is_critical_for_president_and_supervisor_on_whatsapp_or_sms_and_email(world):
    opened(world, risk="high")
    assert sent(world) == [("email", "pres"), ("email", "sup"), ("whatsapp", "pres")]


def test_an_overdue_step_reaches_case_lead_and_president_climbs_once_and_stops_when_acknowledged(world):
    opened(world)
    world.senders["email"].sent.clear()
    world.handle(event("step_overdue", {"step_ref": "0123456789abcdef", "due_at": T0, "responsible": "case_lead"}))
    assert sent(world) == [("email", "lead"), ("email", "pres"), ("sms", "lead"), ("whatsapp", "pres")]
    with world.sessions() as s:
        assert handlers.wake(UnitOfWork(s), world.env) == 0  # not yet
    world.clock.now = T0 + timedelta(hours=4, minutes=1)
    with world.sessions() as s:
        assert handlers.wake(UnitOfWork(s), world.env) == 1
        staged = s.execute(select(orm.outbox.c.body)).scalars().all()
    assert len(staged) == 1 and '"notice_due"' in staged[0]
    import json
    due = json.loads(staged[0])
    due["occurred_at"] = datetime.fromisoformat(due["occurred_at"])
    assert handlers.handle_notice_due(UnitOfWork(world.sessions()), world.env, due, "handle_notice_due")
    assert ("email", "sup") in sent(world)
    # the top of the ladder: no further climb
    world.clock.now += timedelta(hours=5)
    with world.sessions() as s:
        handlers.wake(UnitOfWork(s), world.env)
        steps = s.execute(select(orm.notice_log.c.step, orm.notice_log.c.rung)).all()
    assert steps.count(("climbed", "supervisor")) == 1
    assert ("fallback", "president") in steps  # unacknowledged: the next channel of her chain too
    assert sum(1 for c, who in sent(world) if who == "sup") == 1


def test_acknowledging_stops_the_climb(world):
    opened(world)
    world.handle(event("step_overdue", {"step_ref": "0123456789abcdef", "due_at": T0, "responsible": "case_lead"}))
    link = next(m for _, m, _ in world.senders["sms"].sent).link
    token = link.rsplit("/", 1)[1]
    with world.sessions() as s:
        assert handlers.ack_status(UnitOfWork(s), world.env, token).state == "open"
    with world.sessions() as s:
        answer = handlers.acknowledge(UnitOfWork(s), world.env, token)
    assert (answer.state, answer.case_code) == ("acknowledged", "CEC-2026-0001")
    with world.sessions() as s:
        assert handlers.acknowledge(UnitOfWork(s), world.env, token).state == "used"
    world.clock.now = T0 + timedelta(hours=5)
    with world.sessions() as s:
        handlers.wake(UnitOfWork(s), world.env)
        assert s.execute(select(orm.outbox.c.id)).first() is None
    assert ("email", "sup") not in sent(world)


def test_a_refused_whatsapp_goes_out_by_sms_and_a_failing_email_is_tried_again(world):
    world.senders["whatsapp"].answers.append(PermanentRejection("131026"))
    world.senders["email"].answers.append(TransientFailure("451"))
    e = event("case_opened", {"survivor_code": "CEC-2026-0001", "opened_by": "focal", "opened_at": T0,
                              "risk_level": "high"})
    with pytest.raises(DeliveryFailed):
        world.handle(e)
    assert ("sms", "pres") in sent(world) and ("whatsapp", "pres") not in sent(world)
    assert len(sent(world)) == 2  # SMS and one of the two e-mails
    assert world.handle(e) is True  # tried again: only the failed e-mail goes out
    assert sent(world) == [("email", "pres"), ("email", "sup"), ("sms", "pres")]
    assert world.handle(e) is False


def quiet_president(world) -> None:
    """The president asks for quiet from 09:00 to 12:00 in Lima."""
    with world.sessions() as s:
        uow = UnitOfWork(s)
        uow.project_member(ORG, member("pres", ["president"], revision=2, phone="+51900000001",
                                       quiet_hours={"start": "09:00", "end": "12:00"}))
        uow.commit()


def test_quiet_hours_hold_a_normal_message_and_let_a_critical_one_through(world):
    quiet_president(world)
    opened(world)  # 10:00 in Lima: quiet
    assert sent(world) == []
    world.clock.now = T0 + timedelta(hours=2, minutes=1)
    with world.sessions() as s:
        assert handlers.wake(UnitOfWork(s), world.env) == 1


def test_over_the_cap_an_urgent_sms_falls_back_to_email(world):
    with world.sessions() as s:
        s.execute(orm.spending.insert().values(organization_id=ORG, month="2026-11", channel="sms", count=300))
        s.commit()
    opened(world)
    world.senders["email"].sent.clear()
    world.handle(event("step_overdue", {"step_ref": "0123456789abcdef", "due_at": T0, "responsible": "case_lead"}))
    assert ("sms", "lead") not in sent(world)
    assert ("email", "lead") in sent(world)
    with world.sessions() as s:
        assert ("capped", "sms") in s.execute(select(orm.notice_log.c.step, orm.notice_log.c.channel)).all()


def test_a_case_closed_before_its_opening_arrived_waits_for_it_and_then_tells_lead_and_president(world):
    closed = event("case_closed", {"closed_by": "pres", "reason": "survivor_agreed"})
    with pytest.raises(DeliveryFailed):  # the case's code is not known yet: tried again later
        world.handle(closed)
    opened(world)
    world.senders["email"].sent.clear()
    assert world.handle(closed) is True
    assert sent(world) == [("email", "lead"), ("email", "pres")]


def climb(world, hours):
    """Move the clock, let the timer wake, and handle the ``notice_due`` events it staged."""
    import json

    world.clock.now = T0 + timedelta(hours=hours)
    with world.sessions() as s:
        handlers.wake(UnitOfWork(s), world.env)
        staged = s.execute(select(orm.outbox.c.body)).scalars().all()
        s.execute(orm.outbox.delete())
        s.commit()
    for body in staged:
        due = json.loads(body)
        due["occurred_at"] = datetime.fromisoformat(due["occurred_at"])
        handlers.handle_notice_due(UnitOfWork(world.sessions()), world.env, due, "handle_notice_due")
    return len(staged)


OVERDUE = {"step_ref": "0123456789abcdef", "due_at": T0, "responsible": "case_lead"}


def test_a_president_excluded_from_the_case_is_never_told_of_it_and_the_climb_passes_her_rung(world):
    asked = []

    def excluded(organization_id, case_id, candidates):
        asked.append((organization_id, case_id, candidates))
        return {"pres"}

    world.env.excluded = excluded
    opened(world)  # heard of at once: a new case has had no time to gain an exclusion, nobody asked
    assert asked == []
    world.senders["email"].sent.clear()
    world.handle(event("step_overdue", OVERDUE))
    assert sent(world) == [("email", "lead"), ("sms", "lead")]
    assert asked == [(ORG, CASE, ["focal", "lead", "pres", "sup"])]  # everyone, once: nobody singled out

    assert climb(world, 4 + 1 / 60) == 1  # her rung is passed over: the supervisor at once
    assert sent(world) == [("email", "lead"), ("email", "sup"), ("sms", "lead")]
    assert climb(world, 9) == 0  # the top of the ladder
    world.handle(event("case_closed", {"closed_by": "lead", "reason": "survivor_agreed"}))  # to the lead alone
    assert sent(world) == [("email", "lead"), ("email", "lead"), ("email", "sup"), ("sms", "lead")]
    with world.sessions() as s:
        log, notices = orm.notice_log, orm.notices
        lines = s.execute(select(log.c.step, log.c.rung, log.c.recipient_role)
                          .join(notices, notices.c.id == log.c.notice_id).where(notices.c.kind != "case_opened")).all()
    assert ("climbed", "supervisor", None) in lines
    assert [line for line in lines if "president" in line or line[0] == "no_recipient"] == []  # nothing tells


def test_without_an_answer_about_exclusions_nothing_is_sent_and_the_event_and_the_climb_wait(world):
    def away(organization_id, case_id, candidates):
        raise DeliveryFailed("cases did not answer")

    opened(world)
    world.senders["email"].sent.clear()
    world.env.excluded = away
    overdue = event("step_overdue", OVERDUE)
    with pytest.raises(DeliveryFailed):
        world.handle(overdue)
    assert sent(world) == []
    with world.sessions() as s:
        assert s.execute(select(orm.notices.c.id).where(orm.notices.c.kind == "step_overdue")).first() is None

    world.env.excluded = lambda organization_id, case_id, candidates: set()
    assert world.handle(overdue) is True
    assert sent(world) == [("email", "lead"), ("email", "pres"), ("sms", "lead"), ("whatsapp", "pres")]

    world.env.excluded = away
    assert climb(world, 4 + 1 / 60) == 0  # not climbed without the answer
    world.env.excluded = lambda organization_id, case_id, candidates: set()
    assert climb(world, 4 + 2 / 60) == 1
    assert ("email", "sup") in sent(world)


def test_a_message_held_by_quiet_hours_is_not_released_to_someone_excluded_since(world):
    quiet_president(world)
    opened(world)  # 10:00 in Lima: held for the president until 12:00
    assert sent(world) == []
    world.env.excluded = lambda organization_id, case_id, candidates: {"pres"}  # excluded meanwhile
    assert climb(world, 2 + 1 / 60) == 1
    assert sent(world) == []
    with world.sessions() as s:
        d = orm.deliveries
        assert s.execute(select(d.c.recipient_id, d.c.status)).all() == [("pres", "cancelled")]
        steps = s.execute(select(orm.notice_log.c.step)).scalars().all()
    assert "cancelled" not in steps and "sent" not in steps


def test_an_opening_heard_of_late_is_checked_for_exclusions_and_one_heard_of_at_once_is_not(world):
    asked = []

    def excluded(organization_id, case_id, candidates):
        asked.append(case_id)
        return {"pres"}

    world.env.excluded = excluded
    world.clock.now = T0 + timedelta(seconds=10)  # the default: just in time
    opened(world)
    assert asked == [] and sent(world) == [("email", "pres")]

    world.senders["email"].sent.clear()
    world.clock.now = T0 + timedelta(seconds=11)  # late: the president was excluded meanwhile
    world.handle(event("case_opened", {"survivor_code": "CEC-2026-0002", "opened_by": "focal", "opened_at": T0}))
    assert asked == [CASE] and sent(world) == []


def test_a_president_heard_of_before_her_organisation_gets_her_digest_at_its_local_hour_not_utc(world):
    other = "00000000-0000-0000-0000-0000000000cc"
    figures = lambda person: {"open_cases": 1, "due_this_week": 0, "overdue": 0}  # noqa: E731
    with world.sessions() as s:
        uow = UnitOfWork(s)
        uow.project_member(other, member("pres2", ["president"]))  # her organisation's event still on its way
        uow.commit()
    monday_8_utc = datetime(2026, 3, 9, 8, 0, tzinfo=timezone.utc)  # 03:00 in Lima
    world.clock.now = monday_8_utc
    with world.sessions() as s:
        assert handlers.plan_digests(UnitOfWork(s), world.env, figures) == 0
    with world.sessions() as s:
        uow = UnitOfWork(s)
        uow.project_organization(other, {"timezone": "America/Lima", "language": "es", "revision": 1, "code": "SMP"})
        uow.commit()
    with world.sessions() as s:
        assert handlers.plan_digests(UnitOfWork(s), world.env, figures) == 0  # 03:00 in Lima: not yet
    world.clock.now = monday_8_utc + timedelta(hours=5)  # 08:00 in Lima
    with world.sessions() as s:
        assert handlers.plan_digests(UnitOfWork(s), world.env, figures) == 2  # hers and CEC's president's
