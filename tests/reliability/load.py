"""A load generator: focal points' phones opening cases on a poor connection.

A few client green threads open cases through the gateway at a bounded rate
for a bounded time. Each case has its own ``Idempotency-Key``; a client sends
the same key again on 503, on a dropped or refused connection and on a
timeout, until it gets an answer or runs out of patience. Every answer is
recorded (status or error class, never a body: bodies of a case carry
survivor data).
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import eventlet
import requests

# a case of no one: the load must not hold anything that looks like survivor data
CASE_BODY = {"age_group": "18-25"}


@dataclass
class Answer:
    at: float  # seconds since the load began
    status: int | None = None
    error: str | None = None  # exception class of a request that got no answer
    retry_after: bool = False

    @property
    def label(self) -> str:
        if self.status is None:
            return self.error or "no answer"
        if self.status == 503 and not self.retry_after:
            return "503 without Retry-After"
        return str(self.status)


@dataclass
class Submission:
    key: str
    answers: list[Answer] = field(default_factory=list)
    case_ids: set[str] = field(default_factory=set)  # ids in the 201s received for this key

    @property
    def accepted(self) -> bool:
        return bool(self.case_ids)


class LoadGenerator:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        clients: int = 3,
        rate: float = 4.0,
        duration: float = 5.0,
        patience: float = 30.0,
        request_timeout: float = 12.0,
    ):
        self.url = f"{url}/api/v1/cases"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.clients = clients
        self.interval = clients / rate  # each client's pace, so that together they keep ``rate``
        self.duration = duration
        self.patience = patience
        self.request_timeout = request_timeout
        self.prefix = uuid.uuid4().hex[:8]
        self.submissions: list[Submission] = []
        self.started_at: float | None = None
        self._threads: list = []

    def start(self) -> "LoadGenerator":
        self.started_at = time.monotonic()
        self._threads = [eventlet.spawn(self._client, n) for n in range(self.clients)]
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def join(self) -> None:
        for thread in self._threads:
            thread.wait()

    # -- a client ----------------------------------------------------------------------------
    def _client(self, number: int) -> None:
        session = requests.Session()
        end = self.started_at + self.duration
        next_at = self.started_at + self.interval * number / self.clients
        sequence = 0
        while True:
            now = time.monotonic()
            if now < next_at:
                eventlet.sleep(next_at - now)
            if time.monotonic() >= end:
                break
            sequence += 1
            submission = Submission(key=f"load-{self.prefix}-{number}-{sequence}")
            self.submissions.append(submission)
            self._submit(session, submission, give_up_at=max(end, time.monotonic()) + self.patience)
            next_at += self.interval
        session.close()

    def _submit(self, session: requests.Session, submission: Submission, give_up_at: float) -> None:
        backoff = 0.25
        while True:
            answer = Answer(at=self.elapsed())
            try:
                response = session.post(
                    self.url, json=CASE_BODY, headers={**self.headers, "Idempotency-Key": submission.key},
                    timeout=self.request_timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                answer.error = type(exc).__name__
                # a dropped connection may leave a broken pooled socket behind
                session.close()
            else:
                answer.status = response.status_code
                answer.retry_after = "Retry-After" in response.headers
                if response.status_code == 201:
                    submission.case_ids.add(response.json()["id"])
                response.close()
            submission.answers.append(answer)
            # 201, or a 4xx that sending again cannot change; after a 500 (an
            # answer the API should never give) a phone would still try again
            if answer.status is not None and answer.status < 500:
                return
            if time.monotonic() + backoff > give_up_at:
                return
            eventlet.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    # -- what happened ---------------------------------------------------------------------------
    def answer_counts(self) -> Counter:
        return Counter(answer.label for s in self.submissions for answer in s.answers)

    def unexpected_answers(self) -> Counter:
        """Answers a client should never see under these faults: anything but
        201, 503 with Retry-After, or no answer at all (refused, dropped, timed out)."""
        return Counter(
            {label: n for label, n in self.answer_counts().items()
             if label[0].isdigit() and label not in ("201", "503")}
        )
