"""``notify_case_opened`` on a SQLite database, with senders that record what
they were given: two transactions per event, one send per delivery, and
nothing sent by the copy of an event that lost the race."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, delete, event, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from services.notifications.adapters import orm
from services.notifications.adapters.templates import Renderer
from services.notifications.domain.model import DeliveryFailed
from services.notifications.service_layer import handlers
from services.notifications.service_layer.unit_of_work import CLAIM_SECONDS, EventState, UnitOfWork

ORG = "00000000-0000-0000-0000-00000000000a"
T0 = datetime(2026, 11, 20, 14, 0, tzinfo=timezone.utc)


class Outbox:
    """A sender that keeps what it sends; ``during`` runs inside a send, and
    ``fail`` makes the sends fail."""

    channel = "email"

    def __init__(self):
        self.sent, self.fail, self.during = [], False, None

    def send(self, address, message, *, message_key):
        if self.during:
            during, self.during = self.during, None
            during()
        if self.fail:
            raise ConnectionRefusedError()
        self.sent.append((address, message, message_key))


@pytest.fixture
def db(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/n.db")
    orm.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions() as s:
        uow = UnitOfWork(s)
        uow.project_organization(ORG, {"timezone": "America/Lima", "language": "es", "revision": 1})
        uow.project_member(ORG, member("p1", ["president"]))
        uow.project_member(ORG, member("f1", ["focal_point"]))
        uow.commit()
    yield engine, sessions
    engine.dispose()


def member(member_id, roles, revision=1, **changes):
    """A member as identity's events describe her."""
    return {"member_id": member_id, "name": member_id, "email": f"{member_id}@test.invalid", "phone": None,
            "language": "es", "roles": roles, "active": True, "supervised_organization_ids": [],
            "revision": revision, **changes}


def case_opened():
    return {
        "event_id": str(uuid.uuid4()), "type": "case_opened", "organization_id": ORG, "case_id": str(uuid.uuid4()),
        "data": {"survivor_code": "CEC-2026-0001", "opened_at": T0},
    }


def notify(sessions, outbox, ev, *, at=T0, uow_class=UnitOfWork, outcomes=None):
    with sessions() as s:
        return handlers.notify_case_opened(
            uow_class(s), {"email": outbox}, Renderer(), ev, public_url="https://w", now=lambda: at,
            outcome=lambda channel, result: outcomes.append(result) if outcomes is not None else None,
        )


def rows(engine):
    with engine.connect() as conn:
        return conn.execute(select(orm.deliveries).order_by(orm.deliveries.c.id)).all()


def handled(engine):
    with engine.connect() as conn:
        return len(conn.execute(select(orm.processed_events)).all())


def test_a_new_event_sends_once_in_two_transactions(db):
    engine, sessions = db
    outbox, outcomes, commits = Outbox(), [], []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    ev = case_opened()

    assert notify(sessions, outbox, ev, outcomes=outcomes) is True

    assert len(commits) == 2
    [(address, message, key)] = outbox.sent
    assert address == "p1@test.invalid" and key == f"{ev['event_id']}:p1:email"
    assert "09:00 (America/Lima)" in message.body and f"/console/cases/{ev['case_id']}" in message.body
    [row] = rows(engine)
    assert (row.status, row.attempts, row.claimed_until, row.sent_at, row.last_error) == ("sent", 1, None, T0, None)
    assert handled(engine) == 1 and outcomes == ["sent"]
    assert notify(sessions, outbox, ev) is False  # a repeat
    assert len(outbox.sent) == 1


def test_a_failed_send_is_left_for_the_next_try_which_sends_it(db):
    engine, sessions = db
    outbox, outcomes = Outbox(), []
    outbox.fail = True
    ev = case_opened()

    with pytest.raises(DeliveryFailed):
        notify(sessions, outbox, ev, outcomes=outcomes)
    [row] = rows(engine)
    assert (row.status, row.attempts, row.last_error, row.claimed_until) == ("failed", 1, "ConnectionRefusedError", None)
    assert handled(engine) == 0 and outcomes == ["failed"]

    outbox.fail = False
    assert notify(sessions, outbox, ev, at=T0 + timedelta(seconds=2), outcomes=outcomes) is True
    [row] = rows(engine)
    assert (row.status, row.attempts, row.last_error) == ("sent", 2, None)
    assert handled(engine) == 1 and len(outbox.sent) == 1 and outcomes == ["failed", "sent"]


def test_a_copy_of_the_event_handled_while_the_first_sends_sends_nothing(db):
    engine, sessions = db
    outbox, copy_outbox = Outbox(), Outbox()
    ev = case_opened()
    raised = []

    def the_copy():  # no transaction is open now: the copy does not wait on SQLite's lock
        try:
            notify(sessions, copy_outbox, dict(ev))
        except DeliveryFailed:
            raised.append(True)

    outbox.during = the_copy
    assert notify(sessions, outbox, ev) is True

    assert raised == [True] and copy_outbox.sent == [] and len(outbox.sent) == 1
    assert [r.status for r in rows(engine)] == ["sent"] and handled(engine) == 1
    assert notify(sessions, copy_outbox, dict(ev)) is False


class BlindToPlans(UnitOfWork):
    """Sees the event as unplanned on its first look, as a copy would that
    looked just before the other copy committed its plan."""

    looked = False

    def event_state(self, event_id, handler):
        state = super().event_state(event_id, handler)
        if not BlindToPlans.looked:
            BlindToPlans.looked = True
            return EventState(handled=state.handled, planned=False)
        return state


def test_a_copy_that_loses_the_race_to_plan_sends_nothing(db):
    engine, sessions = db
    outbox, copy_outbox = Outbox(), Outbox()
    ev = case_opened()
    raised = []

    def the_copy():
        try:
            notify(sessions, copy_outbox, dict(ev), uow_class=BlindToPlans)
        except DeliveryFailed:
            raised.append(True)

    outbox.during = the_copy
    assert notify(sessions, outbox, ev) is True

    assert BlindToPlans.looked and raised == [True] and copy_outbox.sent == []
    assert [(r.status, r.attempts) for r in rows(engine)] == [("sent", 1)]


class DatabaseGoneAfterSending(UnitOfWork):
    def finish(self, event_id, attempts, *, now):
        raise OperationalError("UPDATE deliveries", {}, Exception("database is away"))


def test_outcomes_not_recorded_leave_the_delivery_claimed_until_it_expires_then_it_is_sent_again(db):
    engine, sessions = db
    outbox = Outbox()
    ev = case_opened()

    with pytest.raises(OperationalError):
        notify(sessions, outbox, ev, uow_class=DatabaseGoneAfterSending)
    [row] = rows(engine)
    assert (row.status, row.attempts) == ("sending", 1) and handled(engine) == 0

    with pytest.raises(DeliveryFailed):  # still claimed: nobody sends it
        notify(sessions, outbox, ev, at=T0 + timedelta(seconds=CLAIM_SECONDS - 1))
    assert len(outbox.sent) == 1

    assert notify(sessions, outbox, ev, at=T0 + timedelta(seconds=CLAIM_SECONDS + 1)) is True
    assert len(outbox.sent) == 2 and outbox.sent[0][2] == outbox.sent[1][2]  # at least once, one Message-ID
    [row] = rows(engine)
    assert (row.status, row.attempts) == ("sent", 2) and handled(engine) == 1


def test_a_retry_cancels_a_delivery_whose_recipient_is_gone_and_plans_a_new_president(db):
    engine, sessions = db
    outbox, outcomes = Outbox(), []
    outbox.fail = True
    ev = case_opened()
    with pytest.raises(DeliveryFailed):
        notify(sessions, outbox, ev)
    with sessions.begin() as s:
        s.execute(delete(orm.recipients).where(orm.recipients.c.user_id == "p1"))
        s.execute(update(orm.recipients).where(orm.recipients.c.user_id == "f1").values(roles="president"))

    outbox.fail = False
    assert notify(sessions, outbox, ev, at=T0 + timedelta(seconds=2), outcomes=outcomes) is True

    assert sorted((r.recipient_id, r.status) for r in rows(engine)) == [("f1", "sent"), ("p1", "cancelled")]
    assert [a for a, _, _ in outbox.sent] == ["f1@test.invalid"]
    assert sorted(outcomes) == ["cancelled", "sent"]


def test_every_president_is_told_and_one_failure_keeps_the_event_open(db):
    engine, sessions = db
    with sessions() as s:
        uow = UnitOfWork(s)
        uow.project_member(ORG, member("p2", ["president"], language="en"))
        uow.commit()

    class FailsForP2(Outbox):
        def send(self, address, message, *, message_key):
            if address.startswith("p2") and not self.sent_p2:
                raise TimeoutError()
            super().send(address, message, message_key=message_key)

        sent_p2 = False

    outbox = FailsForP2()
    ev = case_opened()
    with pytest.raises(DeliveryFailed):
        notify(sessions, outbox, ev)
    assert sorted((r.recipient_id, r.status) for r in rows(engine)) == [("p1", "sent"), ("p2", "failed")]

    outbox.sent_p2 = True
    assert notify(sessions, outbox, ev, at=T0 + timedelta(seconds=2)) is True
    assert [a for a, _, _ in outbox.sent] == ["p1@test.invalid", "p2@test.invalid"]  # p1 not again
    assert "New case" in outbox.sent[1][1].subject  # in her language
    assert handled(engine) == 1


def test_an_organisation_without_a_president_is_handled_at_once(db):
    engine, sessions = db
    with sessions.begin() as s:
        s.execute(delete(orm.recipients).where(orm.recipients.c.roles.contains("president")))
    outbox = Outbox()
    assert notify(sessions, outbox, case_opened()) is True
    assert outbox.sent == [] and rows(engine) == [] and handled(engine) == 1


def test_a_text_that_cannot_be_rendered_fails_the_delivery_and_is_recorded(db):
    engine, sessions = db
    with sessions() as s:
        uow = UnitOfWork(s)
        uow.project_organization(ORG, {"timezone": "Nowhere/Atlantis", "language": "es", "revision": 2})
        uow.commit()
    outbox = Outbox()

    with pytest.raises(DeliveryFailed):
        notify(sessions, outbox, case_opened())

    [row] = rows(engine)
    assert (row.status, row.last_error, row.claimed_until) == ("failed", "ZoneInfoNotFoundError", None)
    assert outbox.sent == []


def test_a_president_who_also_leads_cases_hears_of_every_new_case(db):
    engine, sessions = db
    with sessions() as s:
        uow = UnitOfWork(s)
        uow.project_member(ORG, member("p1", ["focal_point"], revision=2))
        uow.project_member(ORG, member("l1", ["case_lead", "president"]))
        uow.project_member(ORG, member("x1", ["president"], email=None))  # no address: cannot be e-mailed
        uow.commit()
    outbox = Outbox()
    assert notify(sessions, outbox, case_opened()) is True
    assert [address for address, _, _ in outbox.sent] == ["l1@test.invalid"]
    assert [(r.recipient_id, r.recipient_role) for r in rows(engine)] == [("l1", "president")]


def test_an_older_or_repeated_member_event_changes_nothing(db):
    engine, sessions = db
    with sessions() as s:
        uow = UnitOfWork(s)
        assert uow.project_member(ORG, member("p1", ["president", "supervisor"], revision=3,
                                              supervised_organization_ids=["org-b"])) is True
        assert uow.project_member(ORG, member("p1", ["focal_point"], revision=2)) is False
        assert uow.project_member(ORG, member("p1", ["focal_point"], revision=3)) is False
        uow.commit()
        row = s.execute(select(orm.recipients).where(orm.recipients.c.user_id == "p1")).one()
        assert (row.roles, row.revision) == ("president,supervisor", 3)
        assert [r.user_id for r in uow.supervisors_of("org-b")] == ["p1"]
        uow.project_member(ORG, member("p1", ["president"], revision=4, active=False))
        uow.commit()
        assert uow.supervisors_of("org-b") == [] and uow.recipient("p1") is None
