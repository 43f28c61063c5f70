"""How long, how hard and on which database each fault runs.

The bounded form runs in CI: each fault once, for a few seconds of load, the
whole suite within about four minutes on two cores; the databases alternate
between faults, so each is covered. ``--long``
runs every fault on both databases, with more load for longer, injects it
twice per run and repeats each run.
"""
from __future__ import annotations

from dataclasses import dataclass

KILLS = ["kill-cases", "kill-notifications", "kill-referrals", "kill-gateway"]
CUTS_BOUNDED = ["cut-cases", "cut-notifications"]
CUTS_LONG = CUTS_BOUNDED + ["cut-gateway", "cut-referrals"]
OTHERS = ["broker-restart", "poison"]
OTHERS_LONG = OTHERS + ["broker-crash"]  # the node killed with SIGKILL, not stopped

# Retries of a failed event, shortened for the tests. Notifications' last try
# still waits 60 s, as the production schedule (2, 10, 60 s...) outlasts the
# 60 s claim a delivery keeps when its process is killed mid-send; without
# that, a test's short schedule would dead-letter an e-mail the product would
# have sent.
CASES_RETRY_DELAYS = [0.25, 0.5, 1, 2]
NOTIFICATIONS_RETRY_DELAYS = [0.25, 0.5, 1, 2, 60]
SERVICE_ENV = {
    # a new case's first step (R0, due an hour after opening) falls due soon
    # 3.6 s after it was opened: an alert at a sweep soon after (a step planned
    # inside its window gets none, so the window is just under an hour here)
    "CASES_SWEEP_INTERVAL_SECONDS": "1",
    "CASES_DUE_SOON_HOURS": "0.999",
    "CASES_EVENT_RETRY_DELAYS": str(CASES_RETRY_DELAYS),
    "NOTIFICATIONS_EVENT_RETRY_DELAYS": str(NOTIFICATIONS_RETRY_DELAYS),
}
# After everything settled, wait longer than the short retries together
# (and a relay poll) before counting, so that a late duplicate can arrive.
QUIET_SECONDS = sum(CASES_RETRY_DELAYS) + 2.0


@dataclass(frozen=True)
class Plan:
    long: bool
    clients: int
    rate: float  # cases per second, all clients together
    duration: float  # seconds of load
    fault_at: float  # seconds into the load of the first injection
    injections: int  # how many times the fault strikes during one run
    down: float  # seconds a killed service, a cut connection or the broker stays away
    patience: float  # seconds a client keeps retrying a key after the load ended
    settle_timeout: float  # seconds to wait for every case to be told and alerted
    quiet: float
    repetitions: int
    test_timeout: float

    @classmethod
    def for_config(cls, config) -> "Plan":
        return LONG if config.getoption("--long", default=False) else BOUNDED

    def matrix(self) -> list[tuple[str, str]]:
        if self.long:
            return [(f, b) for f in KILLS + CUTS_LONG + OTHERS_LONG for b in ("postgresql", "sqlite")]
        faults = KILLS + CUTS_BOUNDED + OTHERS
        return [(f, "postgresql" if n % 2 else "sqlite") for n, f in enumerate(faults)]

    def injection_times(self) -> list[float]:
        spacing = (self.duration - self.fault_at) / self.injections
        return [self.fault_at + n * spacing for n in range(self.injections)]


BOUNDED = Plan(
    long=False, clients=3, rate=4.0, duration=6.0, fault_at=2.0, injections=1, down=2.0,
    patience=30.0, settle_timeout=80.0, quiet=QUIET_SECONDS, repetitions=1, test_timeout=170.0,
)
LONG = Plan(
    long=True, clients=4, rate=8.0, duration=40.0, fault_at=8.0, injections=2, down=5.0,
    patience=60.0, settle_timeout=90.0, quiet=QUIET_SECONDS, repetitions=3, test_timeout=400.0,
)
