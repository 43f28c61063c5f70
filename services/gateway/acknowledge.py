"""The one-tap acknowledgement page and the SMS provider's replies: what the
gateway serves besides the JSON API, outside its route table.

What holds:

- ``GET /a/<token>`` never acknowledges (link scanners and chat previews
  fetch links): it shows the case code and one button, a POST form to the
  same URL. A small same-origin script (``/a/static/ack.js``) sends the form
  as the page loads, so where scripts run one tap on the link is enough;
  without them the button does it.
- The page shows the case code and nothing else of the case; its title is
  "Warmi". A forged token and an unknown one get the same page, 404. States:
  open (the form), used (already confirmed), expired (410), invalid (404).
- ``POST /a/<token>`` acknowledges once: 200, then 409 (used); 410 when
  expired, 404 when invalid.
- Every page is in Spanish and English, the reader's language first
  (``Accept-Language``, Spanish by default), with ``PAGE_HEADERS``: no inline
  script or style, no framing, no referrer, no cache, no sniffing.
- The page counts against its address's rate limit, as the login does.
- ``POST /api/v1/inbound/sms`` passes a reply on to the notifications
  service only with a valid ``X-Twilio-Signature`` (``reply_signature``) over
  ``SMS_INBOUND_URL``; 403 otherwise, with nothing asked. While
  ``SMS_AUTH_TOKEN`` is empty the route answers 404, as an unknown path does.
  A reply's number and text are never logged.
- The access log shows a link's path as ``/a/<token>``: a token is a
  credential, and no operator may read or use one (``HideLinkTokens``).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from nameko.extensions import DependencyProvider
from werkzeug.datastructures import LanguageAccept
from werkzeug.exceptions import NotFound
from werkzeug.http import parse_accept_header
from werkzeug.wrappers import Request, Response

from services.gateway.api import MAX_BODY_BYTES, RETRY_AFTER_SECONDS, HttpError, RpcUnavailable, call, error_response
from services.gateway.limits import TokenBuckets, address_key

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGE = "/a/<token>"  # the metrics' route label: never the token
ASSET = "/a/static/<name>"
INBOUND_SMS = "/api/v1/inbound/sms"

LANGUAGES = ("es", "en")  # the first is the default
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
    "Vary": "Accept-Language",
}
ASSET_TYPES = {"ack.js": "text/javascript; charset=utf-8", "ack.css": "text/css; charset=utf-8"}
ASSET_MAX_AGE_SECONDS = 3600
# the status of each state the notifications service answers: before the tap, and for the tap
SHOWN = {"open": 200, "used": 200, "expired": 410, "invalid": 404}
TAPPED = {"acknowledged": 200, "used": 409, "expired": 410, "invalid": 404}
# no token of ours looks otherwise (the notifications service checks it in full)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
ACCESS_LOG = "nameko.web.server"  # eventlet's access lines: the request line, path included
_LINK_IN_LOG = re.compile(r"(\s/a/)[^\s/?\"]+(?=[\s?\"])")

_templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined,
                         trim_blocks=True, lstrip_blocks=True)


# -- the page -----------------------------------------------------------------------

def page(request: Request, token: str, status_of: Callable[[str], dict], buckets: TokenBuckets) -> Response:
    """``GET /a/<token>``: what the link is about and the button; writes nothing.
    ``status_of`` is the notifications service's ``acknowledgement``."""
    return _answer(request, token, status_of, buckets, SHOWN)


def tap(request: Request, token: str, acknowledge: Callable[[str], dict], buckets: TokenBuckets) -> Response:
    """``POST /a/<token>``: the acknowledgement, recorded once by the
    notifications service's ``acknowledge``."""
    return _answer(request, token, acknowledge, buckets, TAPPED)


def _answer(request: Request, token: str, ask: Callable[[str], dict], buckets: TokenBuckets,
            statuses: dict[str, int]) -> Response:
    languages = languages_for(request.headers.get("Accept-Language", ""))
    try:
        wait = buckets.take(address_key(request.remote_addr))
        if wait:
            return render(languages, "too_many", None, 429, {"Retry-After": str(wait)})
        if not _TOKEN.match(token):
            return render(languages, "invalid", None, statuses["invalid"])
        answer = call(ask, token)
        state = answer["state"]
        # an invalid link says nothing of what it might have been
        code = None if state == "invalid" else answer.get("case_code")
        return render(languages, state, code, statuses[state])
    except RpcUnavailable as err:
        log.warning("a service is unavailable", extra={"reason": str(err)})
        return render(languages, "unavailable", None, 503, {"Retry-After": RETRY_AFTER_SECONDS})
    except Exception as err:  # noqa: BLE001 - a page, never a traceback
        log.error("acknowledgement page failed", extra={"error": type(err).__name__})
        return render(languages, "failed", None, 500)


def languages_for(accept_language: str) -> tuple[str, ...]:
    """``LANGUAGES`` with the reader's most preferred one first, by its
    primary tag ("es-PE" is Spanish); Spanish when none is named."""
    preferred = (tag.split("-")[0].lower() for tag, quality in parse_accept_header(accept_language, LanguageAccept)
                 if quality > 0)
    first = next((lang for lang in preferred if lang in LANGUAGES), LANGUAGES[0])
    return (first, *(lang for lang in LANGUAGES if lang != first))


def render(languages: tuple[str, ...], state: str, case_code: str | None, status: int,
           headers: dict | None = None) -> Response:
    """The page for ``state`` in ``languages`` (the first leads), with ``PAGE_HEADERS``."""
    html = _templates.get_template("acknowledge.html.j2").render(
        languages=languages, state=state, case_code=case_code)
    return Response(html, status=status, content_type="text/html; charset=utf-8",
                    headers={**PAGE_HEADERS, "Content-Language": languages[0], **(headers or {})})


def asset(name: str) -> Response:
    """``GET /a/static/<name>``: the page's script and style sheet."""
    if name not in ASSET_TYPES:
        return error_response(404, "not_found", NotFound.description)
    return Response(_asset_bytes(name), status=200, content_type=ASSET_TYPES[name], headers={
        "Cache-Control": f"public, max-age={ASSET_MAX_AGE_SECONDS}", "X-Content-Type-Options": "nosniff"})


@functools.cache
def _asset_bytes(name: str) -> bytes:
    return (HERE / "static" / name).read_bytes()


# -- the access log ---------------------------------------------------------------------

class _TokenFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "/a/" in record.msg:
            record.msg = _LINK_IN_LOG.sub(r"\1<token>", record.msg)
        return True


_token_filter = _TokenFilter()


class HideLinkTokens(DependencyProvider):
    """The access log of this process writes ``/a/<token>`` for a link's path."""

    def setup(self) -> None:
        logger = logging.getLogger(ACCESS_LOG)
        if _token_filter not in logger.filters:
            logger.addFilter(_token_filter)


# -- replies to SMS ---------------------------------------------------------------------

def reply_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's ``X-Twilio-Signature``: base64 of HMAC-SHA1 with the auth
    token over the full URL followed by each POST parameter, sorted by name
    (then value), its name immediately followed by its value."""
    data = url + "".join(name + value for name, value in sorted(set(params)))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


@dataclass(frozen=True)
class ReplyCheck:
    """Whether a request comes from the SMS provider: its signature, with
    the auth token the two share."""

    auth_token: str
    url: str  # the public URL the provider posts to, exactly as configured there

    def valid(self, signature: str | None, params: Iterable[tuple[str, str]]) -> bool:
        if not signature:
            return False
        expected = reply_signature(self.auth_token, self.url, params)
        return hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace"))


class SmsReplies(DependencyProvider):
    """The check of the provider's replies, from ``SMS_AUTH_TOKEN`` and
    ``SMS_INBOUND_URL``; ``None`` (replies off) while the token is empty."""

    def setup(self) -> None:
        config = self.container.config
        token, url = config.get("SMS_AUTH_TOKEN") or "", config.get("SMS_INBOUND_URL") or ""
        if token and not url.startswith(("https://", "http://")):
            raise ValueError("SMS_INBOUND_URL: the URL the SMS provider posts replies to, as configured there, "
                             "is needed with SMS_AUTH_TOKEN")
        self.check = ReplyCheck(str(token), str(url)) if token else None

    def get_dependency(self, worker_ctx) -> ReplyCheck | None:
        return self.check


def inbound_sms(request: Request, check: ReplyCheck | None, reply: Callable[[str, str], dict]) -> Response:
    """``POST /api/v1/inbound/sms``: a signed reply goes to the notifications
    service's ``sms_reply``; the provider gets an empty TwiML answer."""
    if check is None:
        return error_response(404, "not_found", NotFound.description)
    signature = request.headers.get("X-Twilio-Signature")
    if not signature:
        raise HttpError(403, "forbidden", "a signed request is required")
    if request.content_length is None and request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        raise HttpError(411, "length_required", "send the body with a Content-Length")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise HttpError(413, "body_too_large", f"the body may be at most {MAX_BODY_BYTES} bytes")
    form = request.form
    if not check.valid(signature, form.items(multi=True)):
        raise HttpError(403, "forbidden", "a signed request is required")
    call(reply, form.get("From", ""), form.get("Body", ""))
    return Response(EMPTY_TWIML, status=200, content_type="text/xml; charset=utf-8")
