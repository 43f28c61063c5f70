"""Every service process serves the operators' metrics, from its own registry.

Each service runs as its own OS process here: a sample can only be on a
service's port if that service's process recorded it, so a metric of one
service cannot be satisfied by another sharing the test's interpreter.
"""
import re

import requests

from tests.conftest import wait_until
from tests.support.processes import SERVICES, process_stack  # noqa: F401  (fixture)

# the metric families each process declares (a # TYPE line)
DECLARED = {
    "cases": ["warmi_rpc_duration_seconds", "warmi_outbox_pending_messages", "warmi_outbox_oldest_pending_age_seconds",
              "warmi_outbox_published_total", "warmi_step_alerts_total", "warmi_plan_steps_overdue"],
    "notifications": ["warmi_event_handler_duration_seconds", "warmi_notifications_total"],
    "gateway": ["warmi_http_request_duration_seconds", "warmi_http_responses_total"],
    "referrals": ["warmi_rpc_duration_seconds", "warmi_handler_failures_total"],
}

# samples that only the named process can have recorded in this test
HOSTED = {"gateway": {"identity"}}
OWN_SAMPLES = {
    "cases": [
        'warmi_rpc_duration_seconds_count{method="open_case",service="cases"}',
        'warmi_outbox_published_total{service="cases"}',
    ],
    "notifications": [
        'warmi_notifications_total{channel="email",kind="case_opened",outcome="sent"}',
        'warmi_event_handler_duration_seconds_count{event_type="case_opened",service="notifications"}',
    ],
    "referrals": ['warmi_rpc_duration_seconds_count{method="list_providers",service="referrals"}'],
    "gateway": [
        'warmi_http_request_duration_seconds_count{method="POST",route="/api/v1/cases",service="gateway"}',
        'warmi_http_responses_total{route="/api/v1/cases",service="gateway",status_class="2xx"}',
    ],
}


def sample_value(text: str, sample: str) -> float | None:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_each_service_process_serves_its_own_metrics_on_its_own_port(process_stack, smtp):
    stack = process_stack.start_all()
    org = stack.organization()
    token = org["focal_point"]["token"]
    opened = requests.post(f"{stack.url}/api/v1/cases", json={"age_group": "18-25"},
                           headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "metrics-1"}, timeout=15)
    assert opened.status_code == 201, opened.status_code
    providers = requests.get(f"{stack.url}/api/v1/providers", headers={"Authorization": f"Bearer {token}"}, timeout=15)
    assert providers.status_code == 200, providers.status_code
    wait_until(smtp.messages, timeout=30, message="the president's e-mail")

    pages = {}
    for service in SERVICES:
        response = requests.get(stack.metrics_url(service), timeout=5)
        assert response.status_code == 200, service
        assert response.headers["Content-Type"].startswith("text/plain"), service
        pages[service] = response.text

    for service, families in DECLARED.items():
        for family in families:
            assert f"# TYPE {family} " in pages[service], (service, family)

    def recorded_here():
        fresh = {s: requests.get(stack.metrics_url(s), timeout=5).text for s in SERVICES}
        pages.update(fresh)
        return all(sample_value(fresh[s], sample) for s, samples in OWN_SAMPLES.items() for sample in samples)

    # the relay and the e-mail outcome are counted just after the effect
    wait_until(recorded_here, timeout=15, message="every process's own samples")

    for service, samples in OWN_SAMPLES.items():
        for sample in samples:
            assert sample_value(pages[service], sample) >= 1, (service, sample)
            for other in SERVICES:
                if other != service:
                    assert sample_value(pages[other], sample) is None, f"{other} serves {service}'s {sample}"
        # every labelled sample a process serves names that process, if it names a service at all
        # (the gateway's process hosts identity, and serves its metrics too)
        named = set(re.findall(r'service="([a-z_]+)"', pages[service]))
        assert named <= {service} | HOSTED.get(service, set()), (service, named)

    pids = {stack[s].popen.pid for s in SERVICES}
    assert len(pids) == len(SERVICES)
    stack.assert_running()

