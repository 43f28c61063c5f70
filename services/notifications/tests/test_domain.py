"""Notification rules and texts without broker or SMTP."""
import pytest

from services.notifications.adapters.templates import Renderer
from services.notifications.domain.model import Recipient, overall_status, recipients_for_case_opened


def test_presidents_hear_of_every_new_case_whatever_other_roles_they_hold():
    people = [
        Recipient("1", "o", "", "email", "a@x", "es", frozenset({"president"})),
        Recipient("2", "o", "", "email", "b@x", "es", frozenset({"focal_point"})),
        Recipient("3", "o", "", "email", "c@x", "es", frozenset({"case_lead", "president"})),
        Recipient("4", "o", "", "email", None, "es", frozenset({"president"})),
    ]
    chosen = recipients_for_case_opened(people)
    assert [(r.user_id, r.role) for r in chosen] == [("1", "president"), ("3", "president")]


@pytest.mark.parametrize(
    "statuses,word",
    [([], "none"), (["sent"], "delivered"), (["sent", "cancelled"], "delivered"), (["pending"], "pending"),
     (["sent", "failed"], "retrying"), (["sending"], "pending")],
)
def test_one_word_for_a_cases_notifications(statuses, word):
    assert overall_status(statuses) == word


@pytest.mark.parametrize("locale,subject", [("es", "[Warmi] Nuevo caso CEC-2026-0001"), ("en", "[Warmi] New case CEC-2026-0001"),
                                            ("qu", "[Warmi] Nuevo caso CEC-2026-0001")])
def test_case_opened_text_in_the_recipients_language_spanish_by_default(locale, subject):
    message = Renderer().render(
        "case_opened", locale, survivor_code="CEC-2026-0001", opened_at="2026-11-20 09:00",
        timezone="America/Lima", link="https://w/console/cases/1",
    )
    assert message.subject == subject
    assert "https://w/console/cases/1" in message.body
