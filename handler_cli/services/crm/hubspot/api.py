"""The one way to call HubSpot: transport, retries, errors, and the generic CRM operations.

Every call goes through one retry loop that does what HubSpot asks (a 429 names its policy:
wait for the ten-second window, back off a search, never retry a spent daily quota), retries
5xx and dropped connections, and turns everything else into a ServiceError carrying HubSpot's
message and correlation id. A call whose outcome is unknown (timeout, dropped connection, 5xx)
may have been applied: before sending it again, its `recover` is asked whether it was.

Above the loop sit the operations every object type shares, grouped as HubSpot groups them
(basic, batch, search, associations, properties, account). This module knows nothing of
tickets or e-mails; `HubSpotCRM` gives them their meaning.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from handler_cli.services import ServiceError
from handler_cli.services.crm.hubspot import paths
from handler_cli.services.crm.hubspot.errors import (
    describe_error,
    error_body,
    property_refusals,
    refusal_in_french,
    required_scopes,
    sent_properties,
)
from handler_cli.services.crm.hubspot.scopes import WHERE

log = logging.getLogger("handler_cli")

SERVICE = "hubspot"
TIMEOUT_SECONDS = 15.0
MAX_ATTEMPTS = 4  # the first call and at most 3 retries
SEARCH_PAGE_SIZE = 200  # HubSpot's maximum per search page
SEARCH_MAX_RESULTS = 10_000  # a search query never pages past this
# HubSpot allows about 5 search requests per second per account; keep a small margin.
SEARCH_INTERVAL_SECONDS = 0.22
ASSOCIATIONS_BATCH = 1000  # inputs per associations batch read
READ_BATCH = 100  # inputs per objects batch read

T = TypeVar("T")


class _Transient(Exception):
    """A failure worth another attempt. `maybe_applied`: HubSpot may have done it anyway."""

    def __init__(self, message: str, *, maybe_applied: bool = False, policy: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied
        self.policy = policy
        self.retry_after = retry_after


# What a batch read reports in `errors` for inputs that simply have nothing to give: the
# 2026-09 specs list only 200 for batch reads (v3/v4 answered 207 with the same `errors`).
_NOTHING_TO_READ = ("NO_ASSOCIATIONS_FOUND", "OBJECT_NOT_FOUND")


def batch_problems(data: dict[str, Any], what: str) -> None:
    """Log the errors of a batch answer that are more than "nothing there" (200 or 207)."""
    for error in data.get("errors") or []:
        kind = f"{error.get('category', '')} {error.get('subCategory', '')}"
        if not any(expected in kind for expected in _NOTHING_TO_READ):
            log.warning("hubspot: %s: %s %s", what, error.get("category", "?"),
                        error.get("message", ""))


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def next_after(page: dict[str, Any]) -> str | None:
    """The `paging.next.after` cursor of a page, if there is a next page."""
    after = ((page.get("paging") or {}).get("next") or {}).get("after")
    return str(after) if after else None


class HubSpotAPI:
    """One httpx client (with the `transport=` seam tests use) and the calls built on it.

    `own_properties` are the properties this installation creates with `setup hubspot`: a
    refusal that names one of them points the operator there.
    """

    def __init__(self, base_url: str, token: str, *, transport: httpx.BaseTransport | None = None,
                 timeout: float = TIMEOUT_SECONDS, retry_base: float = 1.0,
                 own_properties: Iterable[str] = ()) -> None:
        self.base_url = base_url.rstrip("/")
        self._retry_base = max(0.0, retry_base)
        self._own_properties = frozenset(own_properties)
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}",
                     "Accept": "application/json", "User-Agent": "handler-cli"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )
        self._search_lock = threading.Lock()
        self._last_search = 0.0

    def close(self) -> None:
        self._client.close()

    # -- sending, with retries ------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: what the 429 policy asks, else backoff with jitter."""
        exc = state.outcome.exception() if state.outcome else None
        base = self._retry_base
        if isinstance(exc, _Transient):
            if exc.retry_after is not None:
                return min(exc.retry_after, 60.0)
            if exc.policy == "TEN_SECONDLY_ROLLING":  # the window is 10 s: let it roll over
                return base * 10 * random.uniform(1.0, 1.1)
            if exc.policy == "SECONDLY":
                return base * random.uniform(1.0, 1.5)
        return base * 2 ** (state.attempt_number - 1) * random.uniform(0.5, 1.5)

    def _retrying(self) -> Retrying:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning("hubspot: %s; retry %d/%d in %.2fs", exc,
                        state.attempt_number, MAX_ATTEMPTS - 1, wait)

        return Retrying(stop=stop_after_attempt(MAX_ATTEMPTS), wait=self._wait,
                        retry=retry_if_exception_type(_Transient), reraise=True,
                        before_sleep=before_sleep)

    def _send(self, method: str, path: str, params: Any, body: Any) -> httpx.Response:
        """One attempt. Raises _Transient for what deserves a retry."""
        what = f"{method} {path}"
        try:
            resp = self._client.request(method, path, params=params, json=body)
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            raise ServiceError(SERVICE, f"{what}: {exc}", transient=False) from exc
        except httpx.TransportError as exc:
            # Refused or never connected: nothing reached HubSpot. Otherwise it may have.
            unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            raise _Transient(f"{what}: {type(exc).__name__}: {exc or 'no detail'}",
                             maybe_applied=not unsent) from exc
        if resp.status_code == 429:
            body = error_body(resp)
            policy = str(body.get("policyName") or "")
            if not policy and "secondly" in str(body.get("message", "")).lower():
                policy = "SECONDLY"
            if policy == "DAILY":
                raise ServiceError(SERVICE, "daily API quota spent, retry after midnight "
                                   f"(account time): {describe_error(method, path, resp)}",
                                   transient=False)
            retry_after = resp.headers.get("Retry-After")
            raise _Transient(describe_error(method, path, resp), policy=policy,
                             retry_after=float(retry_after) if retry_after
                             and retry_after.replace(".", "", 1).isdigit() else None)
        if resp.status_code >= 500:
            raise _Transient(describe_error(method, path, resp), maybe_applied=True)
        return resp

    def request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                allow: tuple[int, ...] = (),
                recover: Callable[[], T | None] | None = None) -> httpx.Response | T:
        """Call HubSpot with retries; return a 2xx response (or one whose status is in `allow`).

        `recover` is asked before any retry of an attempt HubSpot may have applied (a create
        that timed out): when it finds the result, that result is returned instead of sending
        the request again.
        """
        maybe_applied = False
        try:
            for attempt in self._retrying():
                with attempt:
                    if maybe_applied and recover is not None:
                        found = recover()
                        if found is not None:
                            log.info("hubspot: %s had been applied before the failure", path)
                            return found
                    try:
                        resp = self._send(method, path, params, body)
                    except _Transient as exc:
                        maybe_applied = maybe_applied or exc.maybe_applied
                        raise
        except _Transient as exc:
            raise ServiceError(SERVICE, f"{exc} (gave up after {MAX_ATTEMPTS} attempts)") from exc
        if resp.is_success or resp.status_code in allow:
            return resp
        raise self.refused(method, path, resp)

    def refused(self, method: str, path: str, resp: httpx.Response) -> ServiceError:
        """A 4xx HubSpot will answer the same way next time: not worth retrying.

        A refused property value is said first, in French, for the admin who reads the
        request's errors; HubSpot's own text follows for the operator.
        """
        text = describe_error(method, path, resp)
        if resp.status_code == 401:
            text += (" — check HUBSPOT_ACCESS_TOKEN: a HubSpot service key "
                     f"({WHERE}) or a legacy private-app token")
        elif resp.status_code == 403:
            scopes = required_scopes(error_body(resp))
            text += (f" — the service key lacks the scope {' or '.join(scopes)}: add it to the "
                     f"key in HubSpot ({WHERE})" if scopes else
                     f" — the service key lacks a scope: compare its scopes ({WHERE}) with "
                     "the README's list")
        elif resp.status_code == 400:
            refusals = property_refusals(error_body(resp))
            if refusals:
                sent = sent_properties(resp.request)
                french = "; ".join(refusal_in_french(r, sent, self._own_properties)
                                   for r in refusals)
                text = f"{french}. — {text}"
            elif any(n in text for n in self._own_properties):
                text += (" — are the custom ticket properties there? run "
                         "`handler-cli setup hubspot`")
        return ServiceError(SERVICE, text, transient=False)

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self.request(method, path, **kwargs)
        assert isinstance(resp, httpx.Response)
        data: dict[str, Any] = resp.json() if resp.content else {}
        return data

    # -- basic: one object ----------------------------------------------------------------

    def get(self, object_type: str, object_id: str, *, id_property: str | None = None,
            properties: Iterable[str] = (), associations: Iterable[str] = (),
            safe: str = "", missing_ok: bool = True) -> dict[str, Any] | None:
        """One object by id (or by a unique property's value); None when HubSpot has none
        (or, with `missing_ok=False`, HubSpot's 404 as an error)."""
        params: list[tuple[str, str]] = []
        if id_property:
            params.append(("idProperty", id_property))
        if properties:
            params.append(("properties", ",".join(properties)))
        if associations:
            params.append(("associations", ",".join(associations)))
        resp = self.request("GET", paths.object_path(object_type, object_id, safe=safe),
                            params=params or None, allow=(404,) if missing_ok else ())
        assert isinstance(resp, httpx.Response)
        if resp.status_code == 404:
            return None
        data: dict[str, Any] = resp.json()
        return data

    def create(self, object_type: str, properties: dict[str, str],
               associations: list[dict[str, Any]], *, allow: tuple[int, ...] = (),
               recover: Callable[[], T | None] | None = None) -> httpx.Response | T:
        """POST a new object with its associations; `recover` finds it after a lost answer."""
        return self.request("POST", paths.objects(object_type), allow=allow, recover=recover,
                            body={"properties": properties, "associations": associations})

    def update(self, object_type: str, object_id: str, properties: dict[str, str]) -> None:
        self.request("PATCH", paths.object_path(object_type, object_id),
                     body={"properties": properties})

    # -- batch and search -----------------------------------------------------------------

    def batch_read(self, object_type: str, ids: Sequence[str],
                   properties: Iterable[str]) -> list[dict[str, Any]]:
        """Objects by id, 100 per call; ids HubSpot does not know are left out."""
        found: list[dict[str, Any]] = []
        wanted = list(properties)
        for chunk in chunks(ids, READ_BATCH):
            data = self.json("POST", paths.batch_read(object_type), body={
                "inputs": [{"id": i} for i in chunk], "properties": wanted,
                "propertiesWithHistory": [],
            })
            batch_problems(data, f"{object_type} batch read")
            found += data.get("results") or []
        return found

    def _search_page(self, object_type: str, body: dict[str, Any]) -> dict[str, Any]:
        """One search call, spaced from the previous one (HubSpot allows ~5 per second)."""
        with self._search_lock:
            wait = self._last_search + SEARCH_INTERVAL_SECONDS - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                return self.json("POST", paths.search(object_type), body=body)
            finally:
                self._last_search = time.monotonic()

    def search(self, object_type: str, filter_groups: list[dict[str, Any]],
               properties: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Every hit of a search, 200 a page, up to HubSpot's 10,000 per query."""
        body: dict[str, Any] = {"filterGroups": filter_groups, "properties": list(properties),
                                "sorts": [], "limit": SEARCH_PAGE_SIZE, "after": "0"}
        while True:
            page = self._search_page(object_type, body)
            yield from page.get("results") or []
            after = next_after(page)
            if not after:
                return
            if after.isdigit() and int(after) >= SEARCH_MAX_RESULTS:
                log.warning("hubspot: more than %d %s match; the rest is not read",
                            SEARCH_MAX_RESULTS, object_type)
                return
            body = {**body, "after": after}

    # -- associations ---------------------------------------------------------------------

    def associated(self, from_type: str, to_type: str,
                   ids: Sequence[str]) -> dict[str, list[str]]:
        """Ids of the `to_type` objects of each object: one call per 1,000 (plus paging)."""
        found: dict[str, list[str]] = {}
        pending: list[dict[str, str]] = [{"id": str(i)} for i in ids]
        while pending:
            follow: list[dict[str, str]] = []
            for chunk in chunks(pending, ASSOCIATIONS_BATCH):
                data = self.json("POST", paths.associations_batch_read(from_type, to_type),
                                 body={"inputs": chunk})
                batch_problems(data, f"{from_type} -> {to_type} associations")
                for result in data.get("results") or []:
                    source = str(result["from"]["id"])
                    found.setdefault(source, []).extend(
                        str(to["toObjectId"]) for to in result.get("to") or [])
                    after = next_after(result)
                    if after:
                        follow.append({"id": source, "after": after})
            pending = follow
        return found

    # -- properties and account -----------------------------------------------------------

    def properties(self, object_type: str) -> dict[str, dict[str, Any]]:
        data = self.json("GET", paths.properties(object_type))
        return {p["name"]: p for p in data.get("results") or []}

    def property_group(self, object_type: str, name: str) -> dict[str, Any] | None:
        resp = self.request("GET", paths.property_group(object_type, name), allow=(404,))
        assert isinstance(resp, httpx.Response)
        return None if resp.status_code == 404 else dict(resp.json())

    def create_property_group(self, object_type: str, body: dict[str, Any]) -> bool:
        """False when HubSpot already had it (409)."""
        resp = self.request("POST", paths.property_groups(object_type), body=body, allow=(409,))
        assert isinstance(resp, httpx.Response)
        return resp.status_code != 409

    def create_property(self, object_type: str, body: dict[str, Any]) -> bool:
        """False when HubSpot already had it (409)."""
        resp = self.request("POST", paths.properties(object_type), body=body, allow=(409,))
        assert isinstance(resp, httpx.Response)
        return resp.status_code != 409

    def update_property(self, object_type: str, name: str, body: dict[str, Any]) -> None:
        self.request("PATCH", paths.property_path(object_type, name), body=body)

    def account_details(self) -> dict[str, Any]:
        return self.json("GET", paths.ACCOUNT_DETAILS)
