"""Offline checks of the deployment descriptions: docker-compose.yml, deploy/.

Nothing here starts a container or talks to a cluster. The external tools are
run as subprocesses: check-jsonschema and kubernetes-validate from this
virtual environment, promtool (Debian's prometheus package) and kubectl from
PATH. A missing tool skips its test on a workstation and fails it in CI.

These tests read the project's files as text; they import none of its code.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "warmi-dashboard.json"
KUSTOMIZE_DIR = DEPLOY / "kubernetes"
VENV_BIN = Path(sys.executable).parent

# The oldest Kubernetes minor the manifests promise to work on, and a recent one.
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")

# Every metric Warmi exports (servicekit/metrics.py), as Prometheus stores it.
WARMI_METRICS = {
    "warmi_rpc_duration_seconds",
    "warmi_event_handler_duration_seconds",
    "warmi_http_request_duration_seconds",
    "warmi_http_responses_total",
    "warmi_handler_failures_total",
    "warmi_event_retries_total",
    "warmi_event_dead_lettered_total",
    "warmi_event_duplicates_total",
    "warmi_event_rejected_total",
    "warmi_events_unrouted_messages",
    "warmi_outbox_pending_messages",
    "warmi_outbox_oldest_pending_age_seconds",
    "warmi_outbox_published_total",
    "warmi_outbox_publish_failures_total",
    "warmi_notifications_total",
    "warmi_notification_latency_seconds",
    "warmi_notification_acknowledgements_total",
    "warmi_notification_escalations_total",
    "warmi_notification_spend_messages",
    "warmi_notification_spend_cap_messages",
    "warmi_notification_cap_fallbacks_total",
    "warmi_notification_unreachable_total",
    "warmi_notification_ack_refused_total",
    "warmi_notification_rules_refused_total",
    "warmi_notification_template_fallbacks_total",
    "warmi_step_alerts_total",
    "warmi_plan_steps_overdue",
    "warmi_retention_deleted_total",
    "warmi_rpc_replies_lost_total",
    "warmi_settle_lost_total",
    "warmi_rpc_replies_repeated_total",
}
WARMI_HISTOGRAMS = {
    "warmi_rpc_duration_seconds",
    "warmi_event_handler_duration_seconds",
    "warmi_http_request_duration_seconds",
    "warmi_notification_latency_seconds",
}
# Not Warmi's own: Prometheus' scrape health, and RabbitMQ's per-object queue depth.
OTHER_METRICS = {"up", "rabbitmq_queue_messages_ready"}

PROCESSES = {  # process -> metrics port
    "cases": 9101,
    "notifications": 9102,
    "referrals": 9103,
    "gateway": 9104,
}
# The database each process uses: the gateway keeps none of its own, its
# process hosts identity (warmi/registry.py HOSTED) and uses identity's.
DATABASE_OF = {
    "cases": "cases",
    "notifications": "notifications",
    "referrals": "referrals",
    "gateway": "identity",
}
# Secrets, and exactly who gets each one (in Compose and on Kubernetes): a
# process gets only the keys it uses. The caller key goes to every process
# (the gateway signs callers, the services check them) and to nothing else;
# the audit keys to the holders of an audit trail (cases; identity in the
# gateway's process) and to the migration, which re-signs cases' older entries
# and, in Compose, runs the operators' commands that the trails record.
SECRET_HOLDERS = {
    "CASES_ENCRYPTION_KEYS": {"cases", "migrate"},  # the migration encrypts stored fields
    "CALLER_KEYS": set(PROCESSES),
    "AUDIT_KEYS": {"cases", "gateway", "migrate"},
    "ACK_KEYS": {"notifications"},  # signs the acknowledgement links of urgent messages
}
# The optional channels' credentials, and who gets each: absent, the channel
# is off (e-mail alone works). The gateway checks forwarded SMS replies with
# the SMS token. On Kubernetes they come from a Secret of their own, which may
# not exist; in Compose from the environment, empty by default.
CHANNEL_SECRETS = {
    "SMS_AUTH_TOKEN": {"notifications", "gateway"},
    "WHATSAPP_TOKEN": {"notifications"},
    "WEBHOOK_SECRET": {"notifications"},
}
CHANNEL_SECRET_NAME = "warmi-channel-secrets"
# The optional channels' settings (not secret), and who reads each.
CHANNEL_SETTINGS = {
    "SMS_URL": {"notifications"},
    "SMS_ACCOUNT_SID": {"notifications"},
    "SMS_FROM": {"notifications"},
    "SMS_MESSAGING_SERVICE_SID": {"notifications"},
    "SMS_STATUS_CALLBACK": {"notifications"},
    "WHATSAPP_URL": {"notifications"},
    "WHATSAPP_PHONE_NUMBER_ID": {"notifications"},
    "SMS_INBOUND_URL": {"gateway"},
}
# A Fernet key: 32 bytes, urlsafe base64 -> 43 characters and "=".
FERNET_KEY = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=")


# --- helpers ------------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(tool: str, hint: str):
    reason = f"{tool} is not installed ({hint})"
    if _in_ci():
        pytest.fail(f"{reason}; CI must run every deployment check", pytrace=False)
    pytest.skip(reason)


def venv_tool(name: str, package: str) -> str:
    """An executable installed in this virtual environment (by pip)."""
    path = VENV_BIN / name
    if not path.is_file():
        _missing(name, f"pip install {package} into {VENV_BIN.parent}")
    return str(path)


def system_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        _missing(name, hint)
    return path


def run(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args), capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


class _PlainLoader(yaml.SafeLoader):
    """YAML as Compose and Kubernetes read it: nameko's implicit ``${VAR}``
    resolver, which the services' config loading adds to ``SafeLoader`` for
    the whole process, is left out (here ``${VAR:-}`` is text)."""


_PlainLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "!env_var"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(path: Path):
    with open(path) as fh:
        return yaml.load(fh, Loader=_PlainLoader)


def config_variables() -> set[str]:
    """Environment variables the services' config.yaml files read (${VAR:default})."""
    found: set[str] = set()
    for path in (ROOT / "services").glob("*/config.yaml"):
        found |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):", path.read_text()))
    assert found, "no ${VAR:default} found in services/*/config.yaml"
    return found


# Variables a Warmi process reads outside config.yaml.
EXTRA_VARIABLES = {"WARMI_HOME", "DATABASE_URL"}

_PROMQL_WORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small, strict scanner).

    Drops strings, comments, label matchers, range and subquery brackets and
    grouping clauses; what remains that is an identifier and not a function
    call or a keyword is a metric name.
    """
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"#[^\n]*", " ", text)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text
    )
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def known(name: str) -> bool:
    if name in WARMI_METRICS or name in OTHER_METRICS:
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in ("bucket", "sum", "count") and base in WARMI_HISTOGRAMS


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard_targets() -> list[tuple[str, dict]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target) for panel in dashboard["panels"] for target in panel.get("targets", [])]


# --- docker-compose.yml -------------------------------------------------------


def test_compose_file_matches_the_compose_specification():
    tool = venv_tool("check-jsonschema", "check-jsonschema")
    assert_ok(run(tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)))


def test_compose_runs_every_process_after_the_migration():
    services = load_yaml(COMPOSE)["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    for process in PROCESSES:
        service = services[process]
        assert service["command"] == ["serve", process]
        assert service["image"] == services["migrate"]["image"]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}
        assert "healthcheck" in service, f"{process} has no healthcheck"
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert any(port.endswith(":8000") for port in services["gateway"]["ports"])
    assert services["gateway"]["environment"]["GATEWAY_ADDRESS"] == "0.0.0.0:8000"
    assert "/api/v1/health" in " ".join(services["gateway"]["healthcheck"]["test"])


def test_compose_environment_names_what_the_services_read():
    services = load_yaml(COMPOSE)["services"]
    readable = config_variables() | EXTRA_VARIABLES
    for name in ("migrate", *PROCESSES):
        unknown = set(services[name]["environment"]) - readable
        assert not unknown, f"{name} sets variables no service reads: {sorted(unknown)}"
    migrate_env = services["migrate"]["environment"]
    for process, database in DATABASE_OF.items():
        variable = f"{database.upper()}_DATABASE_URL"
        url = migrate_env[variable]
        assert url.startswith("postgresql://") and url.endswith(f"/warmi_{database}")
        assert services[process]["environment"][variable] == url
        # one database URL per process: its own, and no other service's
        urls = {k for k in services[process]["environment"] if k.endswith("_DATABASE_URL")}
        assert urls == {variable}, (process, sorted(urls))
    assert {k for k in migrate_env if k.endswith("_DATABASE_URL")} == {
        f"{database.upper()}_DATABASE_URL" for database in DATABASE_OF.values()
    }
    for process, port in PROCESSES.items():
        env = services[process]["environment"]
        assert env[f"{process.upper()}_METRICS_ADDRESS"] == f"0.0.0.0:{port}"
        assert env["AMQP_URI"].startswith("amqp://") and "@rabbitmq:5672/" in env["AMQP_URI"]
    assert services["notifications"]["environment"]["SMTP_URL"] == "smtp://mailpit:1025"


def test_compose_requires_the_encryption_keys_from_the_environment():
    keys = load_yaml(COMPOSE)["services"]["cases"]["environment"]["CASES_ENCRYPTION_KEYS"]
    assert keys.startswith("${CASES_ENCRYPTION_KEYS:?"), keys


def test_compose_gives_each_secret_from_the_environment_only_to_its_holders():
    """Every secret comes from the operator's environment, and Compose refuses
    to start without it (``${VAR:?message}``); each process that holds it gets
    the same value, and no other service sees it."""
    services = load_yaml(COMPOSE)["services"]
    for secret, holders in SECRET_HOLDERS.items():
        given = {name for name, service in services.items() if secret in service.get("environment", {})}
        assert given == holders, (secret, sorted(given))
        values = {services[name]["environment"][secret] for name in holders}
        assert len(values) == 1, (secret, values)
        (value,) = values
        assert re.fullmatch(r"\$\{%s:\?[^}]*deploy/README\.md\}" % secret, value), value


def test_compose_passes_the_optional_channels_through_empty_by_default():
    """SMS, WhatsApp and webhooks are off unless the operator's environment
    turns them on (``${VAR:-}``); each credential and setting reaches only the
    processes that read it, and Compose starts without any of them."""
    services = load_yaml(COMPOSE)["services"]
    for variable, readers in {**CHANNEL_SECRETS, **CHANNEL_SETTINGS}.items():
        given = {name for name, service in services.items() if variable in service.get("environment", {})}
        assert given == readers, (variable, sorted(given))
        for name in readers:
            assert services[name]["environment"][variable] == "${%s:-}" % variable, (name, variable)


def test_postgres_init_creates_one_database_per_service():
    services = load_yaml(COMPOSE)["services"]
    assert "./deploy/postgres/init.sql:/docker-entrypoint-initdb.d/init.sql:ro" in services["postgres"]["volumes"]
    sql = (DEPLOY / "postgres" / "init.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+);", sql))
    assert created == {f"warmi_{database}" for database in DATABASE_OF.values()}
    urls = {v for k, v in services["migrate"]["environment"].items() if k.endswith("_DATABASE_URL")}
    assert {url.rpartition("/")[2] for url in urls} == created


def test_no_key_material_in_the_deployment_files():
    files = [COMPOSE, ROOT / "Dockerfile", *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]
    for path in files:
        text = path.read_text()
        assert not FERNET_KEY.search(text), f"{path.relative_to(ROOT)} holds what looks like a Fernet key"
        assert not re.search(r"^kind:\s*Secret\s*$", text, re.M), f"{path.relative_to(ROOT)} defines a Secret"


# --- Prometheus ---------------------------------------------------------------


def test_prometheus_scrapes_every_process_and_rabbitmq():
    compose = load_yaml(COMPOSE)["services"]
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    targets = {t for job in jobs.values() for sc in job["static_configs"] for t in sc["targets"]}
    for process, port in PROCESSES.items():
        assert process in compose
        assert f"{process}:{port}" in targets
    assert jobs["rabbitmq"]["static_configs"][0]["targets"] == ["rabbitmq:15692"]
    # per-queue series (rabbitmq_queue_messages_ready{queue=...}) need this path
    assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"


def test_prometheus_config_and_its_rules_are_valid():
    promtool = system_tool("promtool", "apt-get install prometheus")
    # also loads alerts.yml, named relative to prometheus.yml
    assert_ok(run(promtool, "check", "config", str(PROMETHEUS_CONFIG)))
    assert_ok(run(promtool, "check", "rules", str(ALERTS)))


def test_alert_rules_pass_their_unit_tests():
    promtool = system_tool("promtool", "apt-get install prometheus")
    result = run(promtool, "test", "rules", str(ALERTS_TEST))
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_cover_several_alerts():
    tested = {
        case["alertname"]
        for test in load_yaml(ALERTS_TEST)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    defined = {rule["alert"] for rule in alert_rules()}
    assert tested <= defined
    assert len(tested) >= 2


def test_every_notification_alert_is_shown_firing_by_a_unit_test():
    fired = {
        case["alertname"]
        for test in load_yaml(ALERTS_TEST)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    notification_alerts = {rule["alert"] for rule in alert_rules() if "warmi_notification" in rule["expr"]}
    assert len(notification_alerts) >= 5, sorted(notification_alerts)
    assert notification_alerts <= fired, sorted(notification_alerts - fired)


def test_identitys_outbox_is_watched_through_the_gateways_process():
    """Identity runs in the gateway's process and has an outbox: its metrics
    come from the gateway's scrape target with service="identity", and the
    outbox alert fires for them (checked by promtool in the rule tests)."""
    covered = set()
    for test in load_yaml(ALERTS_TEST)["tests"]:
        series = " ".join(s["series"] for s in test["input_series"])
        for case in test.get("alert_rule_test", []):
            if case["alertname"] == "WarmiOutboxStuck":
                for alert in case.get("exp_alerts") or []:
                    if alert["exp_labels"].get("service") == "identity":
                        assert 'job="warmi-gateway"' in series and f"gateway:{PROCESSES['gateway']}" in series
                        covered.add("identity")
    assert covered == {"identity"}, "no rule test shows WarmiOutboxStuck firing for identity"
    # no outbox rule is narrowed to a list of services
    for rule in alert_rules():
        if "warmi_outbox" in rule["expr"]:
            assert "service=" not in rule["expr"].replace(" ", ""), rule["alert"]
    for title, target in dashboard_targets():
        if "warmi_outbox" in target["expr"]:
            assert "service=" not in target["expr"].replace(" ", ""), title


def test_the_expected_alerts_exist():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    expressions = " ".join(rule["expr"] for rule in rules.values())
    for metric in (
        "warmi_outbox_oldest_pending_age_seconds",
        "warmi_event_dead_lettered_total",
        "warmi_event_rejected_total",
        "warmi_events_unrouted_messages",
        "rabbitmq_queue_messages_ready",
        "warmi_handler_failures_total",
        "warmi_http_responses_total",
        "warmi_rpc_duration_seconds_bucket",
        "warmi_notifications_total",
        "warmi_notification_cap_fallbacks_total",
        "warmi_notification_rules_refused_total",
        "warmi_notification_unreachable_total",
        "warmi_notification_spend_messages",
        "warmi_notification_spend_cap_messages",
    ):
        assert metric in expressions, f"no alert reads {metric}"
    assert any(re.fullmatch(r"up\s*==\s*0", rule["expr"].strip()) for rule in rules.values())
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"].get("summary"), name


def test_alerts_name_only_known_metrics():
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        unknown = {n for n in names if not known(n)}
        assert not unknown, f"{rule['alert']} names unknown metrics {sorted(unknown)}"


def test_the_metric_list_matches_the_code():
    """WARMI_METRICS is kept here by hand; the code must still declare each name."""
    source = "\n".join(p.read_text() for p in (ROOT / "servicekit").rglob("*.py"))
    declared = set(re.findall(r"[\"'](warmi_[a-z0-9_]+)[\"']", source))
    assert WARMI_METRICS <= declared, f"no longer in the code: {sorted(WARMI_METRICS - declared)}"


def test_metric_name_scanner():
    expr = (
        'sum by (service, le) (rate(warmi_rpc_duration_seconds_bucket{service="cases", le=~".+"}[5m]))'
        ' / on (service) group_left () max without (instance) (up offset 1h) > bool 0'
        ' or rabbitmq_queue_messages_ready{queue=~".+\\\\.dead"} unless warmi_typo_total'
    )
    assert metric_names(expr) == {
        "warmi_rpc_duration_seconds_bucket", "up", "rabbitmq_queue_messages_ready", "warmi_typo_total"
    }
    assert not known("warmi_typo_total")
    assert known("warmi_rpc_duration_seconds_bucket")
    assert not known("warmi_outbox_pending_messages_bucket")


# --- Grafana ------------------------------------------------------------------


def test_dashboard_panels_each_query_warmi_or_rabbitmq():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"], "the dashboard has no panels"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard["panels"]:
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        assert any(re.search(r"\bwarmi_\w+|\brabbitmq_\w+", e) for e in exprs), (
            f"panel {panel.get('title')!r} queries no warmi_ or rabbitmq metric"
        )


def test_dashboard_shows_the_essentials():
    exprs = " ".join(target["expr"] for _, target in dashboard_targets())
    for needle in (
        "warmi_http_responses_total",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "warmi_outbox_pending_messages",
        "warmi_notifications_total",
        "warmi_event_retries_total",
        "warmi_event_dead_lettered_total",
        "warmi_notification_latency_seconds_bucket",
        "warmi_notification_acknowledgements_total",
        "warmi_notification_escalations_total",
        "warmi_notification_spend_messages",
        "warmi_notification_spend_cap_messages",
    ):
        assert needle in exprs, f"the dashboard does not show {needle}"


def test_dashboard_names_only_known_metrics():
    for title, target in dashboard_targets():
        unknown = {n for n in metric_names(target["expr"]) if not known(n)}
        assert not unknown, f"panel {title!r} names unknown metrics {sorted(unknown)}"


def test_dashboard_queries_are_valid_promql(tmp_path):
    promtool = system_tool("promtool", "apt-get install prometheus")
    rules = [
        # Grafana fills in $__rate_interval; any duration will do for a parse
        {"record": f"dashboard:query_{i}", "expr": target["expr"].replace("$__rate_interval", "5m")}
        for i, (_, target) in enumerate(dashboard_targets())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(run(promtool, "check", "rules", str(path)))


# --- Kubernetes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> str:
    kubectl = system_tool("kubectl", "install kubectl; `kubectl kustomize` needs no cluster")
    result = run(kubectl, "kustomize", str(KUSTOMIZE_DIR))
    assert_ok(result)
    return result.stdout


@pytest.fixture(scope="module")
def resources(rendered) -> list[dict]:
    return [doc for doc in yaml.load_all(rendered, Loader=_PlainLoader) if doc]


def test_kubernetes_manifests_match_the_api_schemas(rendered, resources, tmp_path):
    tool = venv_tool("kubernetes-validate", "kubernetes-validate")
    # a file, not stdin ("-"): the tool reads its input once per version
    manifests = tmp_path / "warmi.yaml"
    manifests.write_text(rendered)
    args = [tool, "--strict"]
    for version in KUBERNETES_VERSIONS:
        args += ["-k", version]
    result = run(*args, str(manifests))
    assert_ok(result)
    output = result.stdout + result.stderr
    assert "WARN" not in output and "ERROR" not in output, output
    passed = len(re.findall(r"^INFO .* passed for resource", output, re.M))
    assert passed == len(resources) * len(KUBERNETES_VERSIONS), output


def _by_kind(resources, kind):
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def _pod_spec(resource) -> dict:
    return resource["spec"]["template"]["spec"]


def test_kubernetes_runs_every_process_and_the_migration(resources):
    deployments = _by_kind(resources, "Deployment")
    services = _by_kind(resources, "Service")
    assert set(deployments) == {f"warmi-{p}" for p in PROCESSES}
    assert set(services) == {f"warmi-{p}" for p in PROCESSES}
    for process, port in PROCESSES.items():
        container = _pod_spec(deployments[f"warmi-{process}"])["containers"][0]
        assert container["args"] == ["serve", process]
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        annotations = deployments[f"warmi-{process}"]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
    (job,) = _by_kind(resources, "Job").values()
    assert _pod_spec(job)["containers"][0]["args"] == ["migrate"]
    assert {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"} == {"warmi"}


def test_kubernetes_probes(resources):
    for name, deployment in _by_kind(resources, "Deployment").items():
        container = _pod_spec(deployment)["containers"][0]
        path, port = ("/api/v1/health", "http") if name == "warmi-gateway" else ("/metrics", "metrics")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # a gateway stays in the Service while a service behind it is down:
            # it answers for itself (a JSON 503 with Retry-After, or the part it can)
            assert container[probe]["httpGet"] == {"path": path, "port": port}, (name, probe)


def test_kubernetes_pods_are_restricted_and_bounded(resources):
    workloads = [*_by_kind(resources, "Deployment").values(), *_by_kind(resources, "Job").values()]
    for workload in workloads:
        name = workload["metadata"]["name"]
        spec = _pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"]["memory"], name
            assert container["resources"]["limits"]["memory"] == "256Mi", name


def test_kubernetes_secrets_are_referenced_not_defined(resources):
    assert not _by_kind(resources, "Secret"), "the kustomization must not define a Secret"
    readable = config_variables() | EXTRA_VARIABLES
    workloads = [*_by_kind(resources, "Deployment").values(), *_by_kind(resources, "Job").values()]
    referenced: dict[str, set[str]] = {}
    for workload in workloads:
        for container in _pod_spec(workload)["containers"]:
            for var in container.get("env", []):
                assert var["name"] in readable, f"{var['name']} is read by no service"
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["key"] == var["name"], ref
                # the channels' Secret may be missing, or lack a key; warmi-secrets may not
                assert ref.get("optional", False) == (ref["name"] == CHANNEL_SECRET_NAME), ref
                referenced.setdefault(ref["name"], set()).add(var["name"])
    assert referenced == {
        "warmi-secrets": {
            "AMQP_URI", "CASES_DATABASE_URL", "NOTIFICATIONS_DATABASE_URL", "REFERRALS_DATABASE_URL",
            "IDENTITY_DATABASE_URL", "CASES_ENCRYPTION_KEYS", "SMTP_URL", "CALLER_KEYS", "AUDIT_KEYS", "ACK_KEYS",
        },
        CHANNEL_SECRET_NAME: set(CHANNEL_SECRETS),
    }
    assert set().union(*referenced.values()) == set(_documented_secret_keys())
    assert _created_secret_keys() == referenced


def _secret_names(workload) -> set[str]:
    return {var["name"] for container in _pod_spec(workload)["containers"] for var in container.get("env", [])}


def test_kubernetes_each_pod_gets_only_the_secrets_it_uses(resources):
    deployments = _by_kind(resources, "Deployment")
    (job,) = _by_kind(resources, "Job").values()
    workloads = {**{process: deployments[f"warmi-{process}"] for process in PROCESSES}, "migrate": job}
    for name, workload in workloads.items():
        names = _secret_names(workload)
        for secret, holders in {**SECRET_HOLDERS, **CHANNEL_SECRETS}.items():
            assert (secret in names) == (name in holders), (name, secret)
        urls = {n for n in names if n.endswith("_DATABASE_URL")}
        if name == "migrate":
            assert urls == {f"{database.upper()}_DATABASE_URL" for database in DATABASE_OF.values()}
        else:
            assert urls == {f"{DATABASE_OF[name].upper()}_DATABASE_URL"}, (name, sorted(urls))
    assert "SMTP_URL" in _secret_names(deployments["warmi-notifications"])


def _documented_secret_keys() -> dict[str, set[str]]:
    """The tables of deploy/kubernetes/README.md: key -> the pods it names."""
    text = (KUSTOMIZE_DIR / "README.md").read_text()
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]+) \|", text, re.M)
    assert rows, "deploy/kubernetes/README.md has no table of the Secret's keys"
    return {key: {word.strip() for word in users.split(",")} for key, users in rows}


def _created_secret_keys() -> dict[str, set[str]]:
    """The example commands of deploy/kubernetes/README.md: Secret -> the keys it is made with."""
    text = (KUSTOMIZE_DIR / "README.md").read_text()
    created: dict[str, set[str]] = {}
    for name, options in re.findall(r"create secret generic ([a-z0-9-]+)((?:\s*\\\n\s*--from-file=\S+)+)", text):
        created.setdefault(name, set()).update(re.findall(r"--from-file=([A-Z][A-Z0-9_]*)=", options))
    return created


def test_kubernetes_readme_documents_the_secret_as_the_manifests_use_it(resources):
    deployments = _by_kind(resources, "Deployment")
    (job,) = _by_kind(resources, "Job").values()
    workloads = {**{process: deployments[f"warmi-{process}"] for process in PROCESSES}, "migrate": job}
    users: dict[str, set[str]] = {}
    for name, workload in workloads.items():
        for secret in _secret_names(workload):
            users.setdefault(secret, set()).add(name)
    assert _documented_secret_keys() == users
    # the example commands create every key
    created = set().union(*_created_secret_keys().values())
    assert created == set(users), sorted(created ^ set(users))


def test_kubernetes_config_map_holds_only_known_settings(resources):
    (config_map,) = _by_kind(resources, "ConfigMap").values()
    data = config_map["data"]
    unknown = set(data) - (config_variables() | EXTRA_VARIABLES)
    assert not unknown, f"the ConfigMap sets variables no service reads: {sorted(unknown)}"
    assert data["GATEWAY_ADDRESS"] == "0.0.0.0:8000"
    for process, port in PROCESSES.items():
        assert data[f"{process.upper()}_METRICS_ADDRESS"] == f"0.0.0.0:{port}"
    # the optional channels' settings are there to fill in, empty (off) as shipped
    for setting in CHANNEL_SETTINGS:
        assert data[setting] == "", setting
    assert not set(data) & (set(CHANNEL_SECRETS) | set(SECRET_HOLDERS)), "a credential in the ConfigMap"


def test_kubernetes_notification_rules_come_from_an_optional_config_map(resources):
    """NOTIFICATION_RULES_DIR names the folder where notifications mounts the
    ConfigMap of per-organisation rules, which need not exist."""
    (config_map,) = _by_kind(resources, "ConfigMap").values()
    folder = config_map["data"]["NOTIFICATION_RULES_DIR"]
    spec = _pod_spec(_by_kind(resources, "Deployment")["warmi-notifications"])
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == folder]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"] == {"name": "warmi-notification-rules", "optional": True}


def test_kubernetes_gateway_has_a_disruption_budget(resources):
    budgets = list(_by_kind(resources, "PodDisruptionBudget").values())
    gateway = _by_kind(resources, "Deployment")["warmi-gateway"]
    selector = gateway["spec"]["selector"]["matchLabels"]
    assert any(b["spec"]["selector"]["matchLabels"] == selector for b in budgets)
    assert gateway["spec"]["replicas"] >= 2
