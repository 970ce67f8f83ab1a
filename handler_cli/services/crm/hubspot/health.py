"""What `doctor --check` proves on HubSpot before the first real request: one line per fact.

Each fact is what a run will need, proved with the smallest call that needs the same scope,
and nothing is created:

- the key works and the portal is the one configured (account-info: portal id, UI domain);
- contacts can be read (list one) and written: an update of contact id 0, which cannot exist,
  answers 404 (or 400) when the key may write contacts and 403 MISSING_SCOPES when it may not,
  since HubSpot checks scopes before it looks the object up;
- tickets can be used (list one: the `tickets` scope reads and writes);
- the custom ticket properties are there, `handler_request_id` unique;
- `HUBSPOT_PIPELINE` and `HUBSPOT_PIPELINE_STAGE` exist in the portal (pipelines API):
  they are account data, and a wrong one would otherwise be found by the first ticket.

A 401 is not a finding: it raises (the key cannot even ask), and doctor says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from handler_cli.checks import Finding, missing, proved
from handler_cli.services.crm.hubspot import paths
from handler_cli.services.crm.hubspot.errors import error_body, required_scopes
from handler_cli.services.crm.hubspot.paths import CONTACTS, TICKETS
from handler_cli.services.crm.hubspot.scopes import WHERE
from handler_cli.services.crm.hubspot.setup import CUSTOM_PROPERTY_NAMES, TICKET_PROPERTIES

if TYPE_CHECKING:
    from handler_cli.config import Settings
    from handler_cli.services.crm.hubspot.api import HubSpotAPI

# A contact id HubSpot never gives (ids start at 1): updating it changes nothing.
NO_SUCH_CONTACT = "0"


def lacks_scope(resp: httpx.Response, scope: str, what: str) -> Finding:
    named = required_scopes(error_body(resp)) or [scope]
    return missing(f"{what}: the service key lacks the scope {' or '.join(named)} "
                   f"(add it in HubSpot: {WHERE})")


def _ask(api: HubSpotAPI, method: str, path: str, *, params: Any = None, body: Any = None,
         allow: tuple[int, ...] = ()) -> httpx.Response:
    resp = api.request(method, path, params=params, body=body, allow=(403, *allow))
    assert isinstance(resp, httpx.Response)
    return resp


def portal(api: HubSpotAPI, settings: Settings, ui_domain: str) -> Finding:
    """The key works; the portal id and UI domain ticket links will use are the portal's."""
    details = api.account_details()
    portal_id, domain = str(details.get("portalId", "?")), str(details.get("uiDomain") or "")
    configured = settings.hubspot_portal_id
    if configured and configured != portal_id:
        return missing(f"HUBSPOT_PORTAL_ID={configured}, but the key belongs to portal "
                       f"{portal_id}: fix or unset HUBSPOT_PORTAL_ID")
    if domain and ui_domain != domain:
        return missing(f"ticket links would open {ui_domain}, but portal {portal_id} lives at "
                       f"{domain}: set HUBSPOT_UI_DOMAIN={domain} (or unset HUBSPOT_PORTAL_ID)")
    return proved(f"service key accepted by portal {portal_id}; ticket links open "
                  f"https://{domain or ui_domain}/")


def contacts_readable(api: HubSpotAPI) -> Finding:
    resp = _ask(api, "GET", paths.objects(CONTACTS), params={"limit": "1"})
    if resp.status_code == 403:
        return lacks_scope(resp, "crm.objects.contacts.read", "contacts cannot be read")
    return proved("contacts can be read (crm.objects.contacts.read)")


def contacts_writable(api: HubSpotAPI) -> Finding:
    resp = _ask(api, "PATCH", paths.object_path(CONTACTS, NO_SUCH_CONTACT),
                body={"properties": {}}, allow=(400, 404))
    if resp.status_code == 403:
        return lacks_scope(resp, "crm.objects.contacts.write", "contacts cannot be written")
    return proved("contacts can be written (crm.objects.contacts.write; proved on a contact "
                  "that does not exist, nothing created)")


def tickets_usable(api: HubSpotAPI) -> Finding:
    resp = _ask(api, "GET", paths.objects(TICKETS), params={"limit": "1"})
    if resp.status_code == 403:
        return lacks_scope(resp, "tickets", "tickets cannot be read or written")
    return proved("tickets can be read and written (tickets)")


def ticket_properties(api: HubSpotAPI) -> list[Finding]:
    resp = _ask(api, "GET", paths.properties(TICKETS))
    if resp.status_code == 403:
        return [lacks_scope(resp, "crm.schemas.tickets.read", "ticket properties cannot be read")]
    have = {p["name"]: p for p in resp.json().get("results") or []}
    absent = [n for n in CUSTOM_PROPERTY_NAMES if n not in have]
    if absent:
        return [missing(f"ticket properties missing: {', '.join(absent)}: run "
                        "`handler-cli setup hubspot` (needs crm.schemas.tickets.write)")]
    found = [proved(f"custom ticket properties present ({', '.join(CUSTOM_PROPERTY_NAMES)})")]
    for spec in TICKET_PROPERTIES:
        if spec.unique and not have[spec.name].get("hasUniqueValue"):
            found.append(missing(f"{spec.name} does not require unique values: HubSpot would "
                                 "accept a second ticket for a request; delete the property in "
                                 "HubSpot and run `handler-cli setup hubspot`"))
    return found


def pipeline_and_stage(api: HubSpotAPI, settings: Settings) -> Finding:
    resp = _ask(api, "GET", paths.pipelines(TICKETS))
    if resp.status_code == 403:
        return lacks_scope(resp, "tickets", "ticket pipelines cannot be read")
    pipelines = {str(p.get("id")): p for p in resp.json().get("results") or []}
    wanted, stage = settings.hubspot_pipeline, settings.hubspot_pipeline_stage
    if wanted not in pipelines:
        known = ", ".join(f"{i} ({p.get('label', '?')})" for i, p in pipelines.items())
        return missing(f"HUBSPOT_PIPELINE={wanted}: no such ticket pipeline in this portal; "
                       f"its ticket pipelines are: {known or 'none'}")
    stages = {str(s.get("id")): s for s in pipelines[wanted].get("stages") or []}
    if stage not in stages:
        known = ", ".join(f"{i} ({s.get('label', '?')})" for i, s in stages.items())
        return missing(f"HUBSPOT_PIPELINE_STAGE={stage}: no such stage in pipeline {wanted} "
                       f"({pipelines[wanted].get('label', '?')}); its stages are: {known}")
    return proved(f"new tickets go to pipeline {wanted} ({pipelines[wanted].get('label', '?')}),"
                  f" stage {stage} ({stages[stage].get('label', '?')})")


def check_portal(api: HubSpotAPI, settings: Settings, ui_domain: str) -> list[Finding]:
    """Every fact, in the order an operator fixes them."""
    steps: list[Callable[[], Finding | list[Finding]]] = [
        lambda: portal(api, settings, ui_domain), lambda: contacts_readable(api),
        lambda: contacts_writable(api), lambda: tickets_usable(api),
        lambda: ticket_properties(api), lambda: pipeline_and_stage(api, settings)]
    findings: list[Finding] = []
    for step in steps:
        found = step()
        findings += found if isinstance(found, list) else [found]
    return findings


def email_content_readable(api: HubSpotAPI) -> Finding:
    """For the HubSpot reply source: e-mail bodies come back, not redacted.

    Without `sales-email-read` HubSpot still lists e-mail engagements but redacts what they
    say; a sample of recent ones with no subject, text or HTML at all is that redaction.
    """
    fields = ("hs_email_subject", "hs_email_text", "hs_email_html")
    resp = _ask(api, "GET", paths.objects(paths.EMAILS),
                params={"limit": "10", "properties": ",".join(fields)})
    if resp.status_code == 403:
        return lacks_scope(resp, "crm.objects.contacts.read", "e-mails cannot be read")
    sample = [e.get("properties") or {} for e in resp.json().get("results") or []]
    if not sample:
        return proved("e-mails can be listed; none is logged yet, so whether their content is "
                      "readable shows after the first one (the key needs sales-email-read)")
    if not any(p.get(f) for p in sample for f in fields):
        return missing("e-mail content comes back redacted: the service key lacks the scope "
                       f"sales-email-read (add it in HubSpot: {WHERE}); the poll could not read "
                       "what clients write")
    return proved("e-mail content is readable (sales-email-read)")
