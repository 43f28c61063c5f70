"""A case travels gateway → cases → RabbitMQ → notifications → SMTP."""
from tests.conftest import wait_until


def test_opening_a_case_emails_the_president_once_with_the_code_and_a_link(stack):
    stack.start_all()
    org = stack.organization()

    response = stack.post_case(org["focal_point"]["token"], {"age_group": "18-25", "sex": "female"})

    assert response.status_code == 201, response.text
    case = response.json()
    assert case["survivor_code"].startswith("CEC-")
    assert response.headers["Location"] == f"/api/v1/cases/{case['id']}"
    messages = wait_until(lambda: stack.smtp.messages(), message="the president's e-mail")
    assert len(messages) == 1
    mail = messages[0]
    assert mail["To"] == "presidenta@cec.test.invalid"
    assert case["survivor_code"] in mail["Subject"]
    body = next(p for p in mail.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    assert f"https://warmi.test.invalid/console/cases/{case['id']}" in body


def test_survivor_codes_count_up_per_organisation(stack):
    stack.start_all()
    cec = stack.organization("CEC")
    smp = stack.organization("SMP", timezone="America/Bogota")

    codes = [stack.post_case(cec["focal_point"]["token"], {"age_group": "unknown"}).json()["survivor_code"] for _ in range(2)]
    other = stack.post_case(smp["focal_point"]["token"], {"age_group": "unknown"}).json()["survivor_code"]

    year = codes[0].split("-")[1]
    assert codes == [f"CEC-{year}-0001", f"CEC-{year}-0002"]
    assert other == f"SMP-{year}-0001"


def test_reading_a_case_shows_its_notification_status(stack):
    stack.start_all()
    org = stack.organization()
    case = stack.post_case(org["focal_point"]["token"], {"age_group": "26-40"}).json()

    def delivered():
        shown = stack.get_case(org["president"]["token"], case["id"]).json()
        return shown if shown["notifications"]["status"] == "delivered" else None

    shown = wait_until(delivered, message="delivered status")
    assert shown["survivor_code"] == case["survivor_code"]
    assert shown["notifications"]["deliveries"][0]["channel"] == "email"
    assert shown["notifications"]["deliveries"][0]["recipient_role"] == "president"
    assert shown["narrative"] is None and shown["survivor_name"] is None  # none were given
    assert [s["step_id"] for s in shown["plan"]["steps"]][:3] == ["R0", "R1", "R2"]


def test_an_idempotency_key_makes_a_retried_request_open_one_case(stack):
    stack.start_all()
    org = stack.organization()
    token = org["focal_point"]["token"]

    first = stack.post_case(token, {"age_group": "18-25"}, headers={"Idempotency-Key": "phone-42"})
    again = stack.post_case(token, {"age_group": "18-25"}, headers={"Idempotency-Key": "phone-42"})

    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    wait_until(lambda: stack.smtp.messages(), message="the e-mail")
    assert len(stack.smtp.settled()) == 1


def test_a_case_still_reads_while_the_notifications_service_is_down(stack):
    stack.start_all()
    org = stack.organization()
    case = stack.post_case(org["focal_point"]["token"], {"age_group": "26-40"}).json()
    stack.stop("notifications")

    shown = stack.get_case(org["president"]["token"], case["id"])

    assert shown.status_code == 200
    assert shown.json()["notifications"] == {"status": "unknown", "deliveries": []}
