"""The default protocol and the deadline engine (domain.md)."""
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st
from marshmallow import ValidationError

from services.cases.adapters.protocols import DEFAULT, load, parse
from services.cases.domain.classification import IncidentType
from services.cases.domain.protocol import CaseFacts, Risk, plan, quarter_end, recompute
from services.cases.domain.status import FINAL, CaseStatus, TransitionRefused, transition

T0 = datetime(2026, 11, 20, 14, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
PROTOCOL = load(*DEFAULT)


def due(steps, step_id):
    return {s.step_id: s for s in steps}[step_id]


def test_a_rape_reported_ten_hours_after_the_incident_gets_the_plan_of_the_brief():
    facts = CaseFacts(opened_at=T0, incident_at=T0 - 10 * H, incident_type=IncidentType.RAPE, timezone="America/Lima")

    steps = plan(PROTOCOL, facts)

    assert [s.step_id for s in steps] == ["R0", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10"]
    assert due(steps, "R0").due_at == T0 + 1 * H
    assert due(steps, "R1").due_at == T0 + 24 * H
    assert due(steps, "R2").due_at == T0 + 24 * H
    # earlier of registration + 2 h and incident + 72 h
    assert due(steps, "R3").due_at == min(T0 + 2 * H, T0 - 10 * H + 72 * H) == T0 + 2 * H
    assert due(steps, "R3").urgent
    assert due(steps, "R4").due_at == T0 + 24 * H  # risk not assessed yet: the high-risk deadline
    assert due(steps, "R5").due_at == T0 + 24 * H + 72 * H
    assert due(steps, "R6").due_at == due(steps, "R5").due_at + 72 * H
    assert due(steps, "R7").due_at == due(steps, "R5").due_at + 168 * H
    assert due(steps, "R9").due_at == T0 + 90 * 24 * H
    assert due(steps, "R10").due_at == datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(-5 * H))


def test_registration_done_late_still_never_passes_the_pep_window():
    incident = T0 - 70 * H
    facts = CaseFacts(opened_at=T0, incident_at=incident, incident_type=IncidentType.RAPE,
                      completed={"R1": T0 + 1 * H})
    assert due(plan(PROTOCOL, facts), "R3").due_at == incident + 72 * H


def test_after_the_pep_window_the_emergency_contraception_window_holds():
    incident = T0 - 100 * H
    facts = CaseFacts(opened_at=T0, incident_at=incident, incident_type=IncidentType.SEXUAL_ASSAULT)
    assert due(plan(PROTOCOL, facts), "R3").due_at == T0 + 2 * H
    facts = CaseFacts(opened_at=T0, incident_at=T0 - 119 * H, incident_type=IncidentType.RAPE)
    assert due(plan(PROTOCOL, facts), "R3").due_at == T0 - 119 * H + 120 * H


def test_reported_after_120_hours_the_medical_referral_is_not_urgent():
    facts = CaseFacts(opened_at=T0, incident_at=T0 - 200 * H, incident_type=IncidentType.RAPE)
    step = due(plan(PROTOCOL, facts), "R3")
    assert step.due_at == T0 + 24 * H and not step.urgent


def test_a_physical_assault_gets_no_medical_referral_step():
    facts = CaseFacts(opened_at=T0, incident_type=IncidentType.PHYSICAL_ASSAULT)
    assert "R3" not in [s.step_id for s in plan(PROTOCOL, facts)]


def test_a_minor_gets_the_mandatory_report_step():
    steps = plan(PROTOCOL, CaseFacts(opened_at=T0, incident_type=IncidentType.PHYSICAL_ASSAULT, minor=True))
    assert due(steps, "M1").due_at == T0 + 24 * H
    assert "M1" not in [s.step_id for s in plan(PROTOCOL, CaseFacts(opened_at=T0))]


def test_risk_changes_deadlines_from_the_risk_assessment_on():
    low = plan(PROTOCOL, CaseFacts(opened_at=T0, risk=Risk.LOW))
    high = plan(PROTOCOL, CaseFacts(opened_at=T0, risk=Risk.HIGH))
    assert due(low, "R4").due_at == T0 + 72 * H and due(high, "R4").due_at == T0 + 24 * H
    assert due(low, "R8").due_at - due(low, "R5").due_at == 720 * H
    assert due(high, "R8").due_at - due(high, "R5").due_at == 168 * H
    assert due(low, "R0").due_at == due(high, "R0").due_at


def test_withdrawing_referral_consent_cancels_the_referral_steps():
    facts = CaseFacts(opened_at=T0, incident_type=IncidentType.RAPE, withdrawn_consents=frozenset({"referral"}))
    ids = [s.step_id for s in plan(PROTOCOL, facts)]
    assert "R3" not in ids and "R6" not in ids and "R10" in ids


def test_quarter_end_is_counted_in_the_organisations_time_zone():
    # 2027-01-01 03:00 UTC is still 2026-12-31 in Lima
    assert quarter_end(datetime(2027, 1, 1, 3, tzinfo=timezone.utc), "America/Lima").year == 2026


def test_quarter_end_refuses_a_time_without_a_zone():
    with pytest.raises(ValueError):
        quarter_end(datetime(2027, 1, 1, 3), "America/Lima")


@pytest.mark.parametrize(
    "broken",
    [
        "id: x\nversion: 1\nsteps: []\n",
        "id: x\nversion: 1\nsteps:\n- {id: R1, title: {es: a}, responsible: [nobody], due: {kind: after_opening, hours: 1}, done_when: x}\n",
        "id: x\nversion: 1\nsteps:\n- {id: R1, title: {es: a}, responsible: [case_lead], due: {kind: after_step, step: R9, hours: 1}, done_when: x}\n",
        "id: x\nversion: 1\nsteps:\n- {id: R1, title: {es: a}, responsible: [case_lead], due: {kind: after_opening}, done_when: x}\n",
        "id: x\nversion: 1\nsteps:\n- {id: R1, title: {en: a}, responsible: [case_lead], due: {kind: after_opening, hours: 1}, done_when: x}\n",
    ],
)
def test_a_broken_protocol_file_is_refused(broken):
    with pytest.raises(ValidationError):
        parse(broken)


# -- properties ------------------------------------------------------------------

moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(timezone.utc))
facts_strategy = st.builds(
    lambda opened, incident_back, incident_type, minor, risk, done_after, tz, withdrawn: CaseFacts(
        opened_at=opened,
        incident_at=None if incident_back is None else opened - timedelta(hours=incident_back),
        incident_type=incident_type,
        minor=minor,
        risk=risk,
        timezone=tz,
        completed={k: opened + timedelta(hours=v) for k, v in done_after.items()},
        withdrawn_consents=withdrawn,
    ),
    moments,
    st.none() | st.floats(min_value=0, max_value=2000),
    st.none() | st.sampled_from(list(IncidentType)),
    st.booleans(),
    st.none() | st.sampled_from(list(Risk)),
    st.dictionaries(st.sampled_from(["R1", "R4", "R5"]), st.floats(min_value=0, max_value=500)),
    st.sampled_from(["UTC", "America/Lima", "America/Bogota", "America/La_Paz", "America/Managua"]),
    st.frozensets(st.sampled_from(["referral", "aggregate_reporting"])),
)


@settings(max_examples=300, deadline=None)
@given(facts_strategy)
def test_no_step_is_ever_due_before_the_case_was_opened(facts):
    assert all(step.due_at >= facts.opened_at for step in plan(PROTOCOL, facts))


@settings(max_examples=300, deadline=None)
@given(facts_strategy)
def test_recomputing_twice_equals_recomputing_once(facts):
    stored = {s.step_id: s.due_at for s in plan(PROTOCOL, CaseFacts(opened_at=facts.opened_at))}
    open_steps = {k: v for k, v in stored.items() if k not in facts.completed}

    once = recompute(PROTOCOL, facts, open_steps)
    after_once = {s.step_id: s.due_at for s in once.keep}
    twice = recompute(PROTOCOL, facts, after_once)

    assert twice.keep == once.keep
    assert twice.cancel == ()
    assert set(once.cancel).isdisjoint(after_once)


@given(st.lists(st.sampled_from(list(CaseStatus)), max_size=30))
def test_the_only_way_out_of_a_final_state_is_reopening(targets):
    status = CaseStatus.OPEN
    for target in targets:
        try:
            new = transition(status, target)
        except TransitionRefused:
            continue
        if status in FINAL:
            assert new is CaseStatus.REOPENED
        status = new


def test_a_closed_case_cannot_be_put_back_in_progress_without_reopening():
    with pytest.raises(TransitionRefused):
        transition(CaseStatus.CLOSED, CaseStatus.IN_PROGRESS)
    assert transition(CaseStatus.CLOSED, CaseStatus.REOPENED) is CaseStatus.REOPENED
