"""What handler-cli needs to find in a HubSpot portal: its custom ticket properties.

The ticket step writes custom ticket properties (validation_status, credits_estimes, ...) and
relies on `handler_request_id` being unique to never open a second ticket for a request;
HubSpot refuses unknown properties, so `setup hubspot` creates them first (and `doctor
--check` says when one is missing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from handler_cli.services.crm.hubspot.paths import TICKETS

if TYPE_CHECKING:
    from handler_cli.services.crm.hubspot.api import HubSpotAPI

PROPERTY_GROUP = "handler_cli"


@dataclass(frozen=True)
class PropertySpec:
    """A custom ticket property handler-cli relies on; `setup hubspot` creates it."""

    name: str
    label: str
    type: str
    field_type: str
    description: str
    options: tuple[tuple[str, str], ...] = ()
    unique: bool = False

    def body(self) -> dict[str, Any]:
        """The Properties API create body."""
        body: dict[str, Any] = {
            "name": self.name, "label": self.label, "type": self.type,
            "fieldType": self.field_type, "groupName": PROPERTY_GROUP,
            "description": self.description, "formField": False,
        }
        if self.options:
            body["options"] = option_inputs(self.options)
        if self.unique:
            body["hasUniqueValue"] = True
        return body


def option_inputs(options: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"value": value, "label": label, "hidden": False, "displayOrder": i}
            for i, (value, label) in enumerate(options)]


# Labels are French: the studio's team reads them in HubSpot.
TICKET_PROPERTIES: tuple[PropertySpec, ...] = (
    PropertySpec(
        "validation_status", "Statut de validation", "enumeration", "select",
        "Où en est la demande côté client (géré par handler-cli).",
        options=(("pending_info", "En attente d'informations du client"),
                 ("pending_credits", "Devis envoyé, en attente de validation"),
                 ("pending_admin", "En attente de l'administrateur"),
                 ("validated", "Validé par le client"),
                 ("rejected", "Refusé par le client")),
    ),
    PropertySpec("credits_estimes", "Crédits estimés", "number", "number",
                 "Crédits de modélisation estimés pour la demande."),
    PropertySpec("clickup_subtask_id", "Sous-tâche ClickUp", "string", "text",
                 "Identifiant de la sous-tâche ClickUp de production."),
    PropertySpec("fichiers_urls", "URLs des fichiers", "string", "textarea",
                 "Liens des fichiers joints par le client, un par ligne."),
    PropertySpec("handler_request_id", "Identifiant de demande (handler-cli)", "string", "text",
                 "Identifiant unique de la demande : empêche un second ticket pour la même "
                 "demande.", unique=True),
    PropertySpec("handler_replies_handled", "Réponses traitées (handler-cli)", "string",
                 "textarea", "Identifiants des réponses client déjà traitées par le suivi."),
)
CUSTOM_PROPERTY_NAMES = tuple(p.name for p in TICKET_PROPERTIES)


@dataclass
class PropertiesReport:
    """What `ensure_properties` did: created now, already there, and anything to fix by hand."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def ensure_properties(api: HubSpotAPI) -> PropertiesReport:
    """Create the property group and the custom ticket properties that are missing."""
    report = PropertiesReport()
    if api.property_group(TICKETS, PROPERTY_GROUP) is None:
        api.create_property_group(TICKETS, {"name": PROPERTY_GROUP, "label": "handler-cli",
                                            "displayOrder": -1})
        report.created.append(f"group {PROPERTY_GROUP}")
    existing = api.properties(TICKETS)
    for spec in TICKET_PROPERTIES:
        have = existing.get(spec.name)
        if have is None:
            created = api.create_property(TICKETS, spec.body())
            (report.created if created else report.existing).append(spec.name)
            continue
        report.existing.append(spec.name)
        if have.get("type") != spec.type:
            report.warnings.append(f"{spec.name} has type {have.get('type')!r}, "
                                   f"expected {spec.type!r}: fix it in HubSpot")
        if spec.unique and not have.get("hasUniqueValue"):
            report.warnings.append(
                f"{spec.name} exists without unique values: HubSpot will not refuse a "
                "duplicate ticket; delete it in HubSpot and run setup again")
        if spec.options:
            known = {o.get("value") for o in have.get("options") or []}
            missing = [(v, label) for v, label in spec.options if v not in known]
            if missing:
                options = [{k: o[k] for k in ("value", "label", "hidden", "displayOrder")
                            if k in o} for o in have.get("options") or []]
                options = [{"hidden": False, **o} for o in options]
                api.update_property(TICKETS, spec.name,
                                    {"options": options + option_inputs(missing)})
                report.updated.append(f"{spec.name} (options "
                                      f"{', '.join(v for v, _ in missing)})")
    return report
