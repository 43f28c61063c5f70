"""What an HTTP provider's answer means for a delivery: one mapping for every
channel that speaks HTTP (SMS, WhatsApp, webhooks).

What holds:

- A request gets ``TIMEOUT`` (connect, read) seconds unless configured
  otherwise, follows no redirect (a POST must not turn into a GET, nor a
  webhook lead somewhere its URL does not say), and reads at most
  ``MAX_ANSWER`` bytes of the answer.
- No connection made, or none answered in time, or the answer cut short:
  ``TransientFailure`` named by the exception's class (``ConnectTimeout``,
  ``ReadTimeout``, ``ConnectionError``...). Its text, which names the URL,
  goes nowhere.
- A 2xx is the provider's yes. 408, 429 and 5xx (and any code the provider
  says means "slow down") are "not now": ``TransientFailure``. Any other
  answer is a refusal of this message: ``PermanentRejection``. The code is
  the provider's own error code when its answer carries one, else
  ``http-<status>``.
"""
from __future__ import annotations

import json
from http.cookiejar import DefaultCookiePolicy

import requests
from requests.adapters import HTTPAdapter

from services.notifications.adapters.channels.base import PermanentRejection, TransientFailure

TIMEOUT = (3.0, 10.0)  # seconds to connect, seconds between two reads of the answer
MAX_ANSWER = 64 * 1024


def new_session(pool_size: int) -> requests.Session:
    """A session that keeps up to ``pool_size`` connections to a host open
    (one per worker), retries nothing itself, keeps no cookie and says who
    calls (``User-Agent``)."""
    session = requests.Session()
    session.headers["User-Agent"] = "Warmi-Notifications"
    adapter = HTTPAdapter(pool_maxsize=max(1, pool_size), max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return session


def post(session: requests.Session, url: str, *, timeout: tuple[float, float], **kwargs) -> tuple[int, bytes]:
    """The status and (the first ``MAX_ANSWER`` bytes of) the body of a POST.
    Raises ``TransientFailure`` when no complete answer came."""
    try:
        with session.post(url, timeout=timeout, allow_redirects=False, stream=True, **kwargs) as response:
            body = b""
            for chunk in response.iter_content(8192):
                body += chunk
                if len(body) >= MAX_ANSWER:
                    break
            return response.status_code, body[:MAX_ANSWER]
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
        raise PermanentRejection("bad-address") from None
    except (requests.RequestException, OSError) as exc:
        raise TransientFailure(type(exc).__name__) from None


def json_object(body: bytes) -> dict | None:
    """The answer as a JSON object, or None when it is not one."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def refusal(status: int, provider_code: str | None = None, *, slow_down: frozenset[str] = frozenset()
            ) -> PermanentRejection | TransientFailure:
    """The failure a non-2xx answer means (see the module's docstring)."""
    code = provider_code or f"http-{status}"
    if status in (408, 429) or status >= 500 or provider_code in slow_down:
        return TransientFailure(code)
    return PermanentRejection(code)


def successful(status: int) -> bool:
    return 200 <= status < 300
