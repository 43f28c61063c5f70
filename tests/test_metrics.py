"""Every service process serves the operators' metrics."""
import requests

from tests.conftest import wait_until

EXPECTED = {
    "cases": ["warmi_rpc_duration_seconds", "warmi_outbox_pending_messages", "warmi_outbox_oldest_pending_age_seconds",
              "warmi_outbox_published_total"],
    "notifications": ["warmi_event_handler_duration_seconds", "warmi_notifications_total"],
    "gateway": ["warmi_http_request_duration_seconds", "warmi_http_responses_total"],
    "referrals": ["warmi_handler_failures_total"],
}


def test_each_service_answers_metrics_with_latency_failures_outbox_and_notifications(stack):
    stack.start_all()
    org = stack.organization()
    stack.post_case(org["focal_point"]["token"], {"age_group": "18-25"})
    wait_until(lambda: stack.smtp.messages(), message="the e-mail")

    for service, names in EXPECTED.items():
        response = requests.get(f"http://127.0.0.1:{stack.metrics_ports[service]}/metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        for name in names:
            assert f"# TYPE {name.removesuffix('_total')}" in response.text, (service, name)
    text = response.text
    assert 'warmi_rpc_duration_seconds_count{method="open_case",service="cases"}' in text
    assert 'warmi_notifications_total{channel="email",outcome="sent"}' in text
    assert 'warmi_http_request_duration_seconds_count{method="POST",route="/api/v1/cases",service="gateway"}' in text
