"""Claude through the Anthropic Messages API: a forced tool call returns a typed verdict.

Asked only when keywords are unsure (classification, reply intent). A forced tool call with
an input schema makes the model answer a label from a closed list with a confidence, which
is far sturdier to parse than free text. Every failure, from the network to a malformed
answer, becomes a ServiceError: callers fall back, they never crash.

`anthropic` is imported on first use only (it costs about a second of start-up), so a run
whose keywords are confident never loads it even with a key configured.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from handler_cli.checks import Finding, proved
from handler_cli.services import LLMVerdict, ServiceError

if TYPE_CHECKING:
    from handler_cli.config import Settings

DEFAULT_BASE_URL = "https://api.anthropic.com"
MAX_RETRIES = 2
MAX_TOKENS = 400
MAX_INPUT_CHARS = 8000

REQUEST_LABELS = ("SUPPORT", "MODELISATION")
REPLY_LABELS = ("validation", "refus", "question", "none", "unclear")

# The prompts give Claude the distinctions the keywords get wrong when unsure (issue 13):
# new work vs after-sales talk about a model already ordered; the client's answer vs what
# is left of a signature, a phone footer or our own quoted quote.
REQUEST_SYSTEM = (
    "Tu tries les demandes reçues par un studio de modélisation 3D. Les clients écrivent en "
    "français ou en anglais, souvent sans accents, avec des fautes, en style SMS, parfois un "
    "simple « ci-joint » avec des fichiers, parfois un long e-mail avec formule de politesse, "
    "signature et mention légale (ignore-les).\n"
    "MODELISATION : une demande de NOUVEAU travail de modélisation : créer, reproduire, "
    "numériser, modifier ou optimiser un modèle 3D, convertir des fichiers du client, ou un "
    "devis pour un tel travail. Un nouvel objet, une variante ou un ajout demandé sur un "
    "modèle déjà livré (« la table assortie », « la même en noir », « ajouter le logo ») est "
    "du nouveau travail.\n"
    "SUPPORT : tout le reste, en particulier l'après-vente d'un modèle DÉJÀ commandé ou livré : "
    "où en est ma modélisation, un retard, une correction parce que le modèle livré ne "
    "correspond pas à la commande (mauvaise couleur, mauvaise taille, élément manquant), le "
    "même modèle dans un autre format, renvoyer un fichier, annuler une commande, des crédits "
    "débités ou à rembourser, une facture ; et les problèmes de plateforme, de compte, de "
    "connexion, de paiement, d'abonnement, ou un modèle qui ne s'affiche pas.\n"
    "Parler de 3D ou joindre un fichier 3D ne suffit pas : le fichier d'un modèle déjà livré "
    "joint à une réclamation relève du SUPPORT. Si tu hésites entre les deux, donne une "
    "confidence basse (moins de 0.7) : une personne tranchera.\n"
    "Réponds uniquement avec l'outil, confidence entre 0 et 1, reason en une phrase."
)
REPLY_SYSTEM = (
    "Tu lis la réponse d'un client à un devis de modélisation 3D que nous lui avons envoyé "
    "(le devis dit : « répondez simplement Je valide à cet e-mail »). Le client écrit en "
    "français ou en anglais, souvent sur téléphone : sans accents, en style SMS, avec des "
    "émojis, en une ligne ou en long e-mail.\n"
    "Seuls les mots du client comptent. La citation de notre devis a été retirée, mais il "
    "peut rester une signature (nom, fonction, téléphone, site, slogan), une mention « Envoyé "
    "de mon iPhone » ou des restes de notre devis (« Je valide », des questions) : ignore-les "
    "et ne les prends jamais pour la réponse du client.\n"
    "validation : il accepte le devis et veut que le travail commence, même indirectement "
    "(« on part là-dessus », « c'est parti », « ok go », 👍 accompagné d'un accord).\n"
    "refus : il refuse, annule, trouve trop cher, reporte ou renonce, même sans dire non "
    "(« je ne souhaite plus donner suite », « nous n'allons pas donner suite », « on va "
    "s'en passer », « nous avons choisi un autre prestataire »).\n"
    "question : il demande une information ou une précision, même sans point "
    "d'interrogation (« je voudrais comprendre comment ... avant de m'engager ») ; une "
    "question l'emporte sur un accord.\n"
    "none : ce n'est certainement pas une réponse au devis : réponse automatique, absence du "
    "bureau, simple remerciement ou accusé de réception, « je regarde et je reviens vers "
    "vous ».\n"
    "unclear : tu ne peux pas trancher entre ces cas ; une personne lira le message. Préfère "
    "unclear à une réponse devinée : un accord pris pour un silence laisse le client attendre.\n"
    "Attention aux négations (« je ne valide pas » = refus). Réponds uniquement avec l'outil, "
    "confidence entre 0 et 1, reason en une phrase."
)

_REQUEST_LABELS_HELP = (
    "SUPPORT : après-vente d'un modèle déjà commandé ou livré, plateforme, compte, paiement. "
    "MODELISATION : nouveau travail de modélisation ou devis pour un tel travail."
)
_REPLY_LABELS_HELP = (
    "validation : accepte le devis ; refus : refuse ou renonce ; question : demande une "
    "précision ; none : pas une réponse (réponse automatique, remerciement) ; unclear : "
    "impossible de trancher, une personne lira."
)


def _tool(name: str, description: str, labels: tuple[str, ...], help_text: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "input_schema": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": list(labels), "description": help_text},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "reason": {"type": "string"},
            },
            "required": ["label", "confidence", "reason"],
            "additionalProperties": False,
        },
    }


REQUEST_TOOL = _tool("classer_demande", "Enregistre le type de la demande.", REQUEST_LABELS,
                     _REQUEST_LABELS_HELP)
REPLY_TOOL = _tool("lire_reponse", "Enregistre l'intention de la réponse du client.",
                   REPLY_LABELS, _REPLY_LABELS_HELP)


class ClaudeLLM:
    """The LLM port on Claude; one SDK client per instance, built on first call."""

    name = "claude"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = settings.handler_llm_model
        self.timeout = settings.handler_llm_timeout
        self._client: Any = None
        self._lock = threading.Lock()
        # Set after an answer no retry can fix (bad key, unknown model): later calls fail fast
        # instead of paying a round trip each for the same refusal.
        self._fatal: str | None = None

    @property
    def base_url(self) -> str:
        return (
            self.settings.anthropic_base_url
            or os.environ.get("ANTHROPIC_BASE_URL")
            or DEFAULT_BASE_URL
        )

    def describe(self) -> str:
        return f"Claude {self.model} via {self.base_url}"

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                if not self.settings.anthropic_api_key:
                    raise ServiceError("llm", "ANTHROPIC_API_KEY is not set", transient=False)
                import anthropic

                kwargs: dict[str, Any] = {
                    "api_key": self.settings.anthropic_api_key,
                    "timeout": self.timeout,
                    "max_retries": MAX_RETRIES,
                }
                if self.settings.anthropic_base_url:
                    kwargs["base_url"] = self.settings.anthropic_base_url
                self._client = anthropic.Anthropic(**kwargs)
            return self._client

    def _call(self, **params: Any) -> Any:
        """One Messages API call; every SDK failure becomes a ServiceError."""
        if self._fatal:
            raise ServiceError("llm", self._fatal, transient=False)
        client = self._get_client()
        import anthropic

        try:
            return client.messages.create(model=self.model, **params)
        except anthropic.APITimeoutError:
            raise ServiceError("llm", f"no answer within {self.timeout:g} s "
                                      f"({MAX_RETRIES + 1} attempts)") from None
        except anthropic.APIConnectionError as exc:
            raise ServiceError("llm", f"cannot reach {self.base_url}: {exc}") from None
        except anthropic.APIStatusError as exc:
            status = exc.status_code
            message = f"HTTP {status} {_error_text(exc)}"
            transient = status in (408, 409, 429) or status >= 500
            if status in (401, 403, 404):
                self._fatal = message
            raise ServiceError("llm", message, transient=transient) from None
        except anthropic.AnthropicError as exc:
            raise ServiceError("llm", f"{type(exc).__name__}: {exc}") from None

    def _verdict(self, system: str, tool: dict[str, Any], text: str) -> LLMVerdict:
        labels = tuple(tool["input_schema"]["properties"]["label"]["enum"])
        if len(text) > MAX_INPUT_CHARS:
            text = text[:MAX_INPUT_CHARS] + " [...]"
        response = self._call(
            max_tokens=MAX_TOKENS,
            system=system,
            messages=[{"role": "user", "content": text}],
            tools=[tool],
            tool_choice={"type": "tool", "name": tool["name"]},
        )
        return _parse(response, tool["name"], labels)

    def classify_request(self, text: str) -> LLMVerdict:
        """SUPPORT or MODELISATION for the request text (objet, description, file names)."""
        return self._verdict(REQUEST_SYSTEM, REQUEST_TOOL, text)

    def classify_reply(self, text: str) -> LLMVerdict:
        """validation / refus / question / none / unclear for a client's reply (quotes
        removed)."""
        return self._verdict(REPLY_SYSTEM, REPLY_TOOL, text)

    def check(self) -> list[Finding]:
        """A one-token call proving that the key, the model and the endpoint work."""
        response = self._call(max_tokens=1, messages=[{"role": "user", "content": "ping"}])
        usage = _usage(response)
        model = getattr(response, "model", None) or self.model
        return [proved(f"{model} answered via {self.base_url} "
                       f"({usage['input_tokens']} + {usage['output_tokens']} tokens)")]


def _error_text(exc: Any) -> str:
    """'<type>: <message>' from an Anthropic error body, or the SDK's message."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"{error.get('type', 'error')}: {error['message']}"
    return str(getattr(exc, "message", "") or exc)


def _usage(response: Any) -> dict[str, int]:
    usage = getattr(response, "usage", None)
    try:
        return {
            "input_tokens": int(getattr(usage, "input_tokens", 0) or 0),
            "output_tokens": int(getattr(usage, "output_tokens", 0) or 0),
        }
    except (TypeError, ValueError):
        return {"input_tokens": 0, "output_tokens": 0}


def _parse(response: Any, tool_name: str, labels: tuple[str, ...]) -> LLMVerdict:
    """The verdict in the forced tool call; anything off-schema is a ServiceError."""
    blocks = getattr(response, "content", None) or []
    call = next(
        (b for b in blocks
         if getattr(b, "type", None) == "tool_use" and getattr(b, "name", None) == tool_name),
        None,
    )
    if call is None:
        kinds = [getattr(b, "type", "?") for b in blocks]
        raise ServiceError("llm", f"no {tool_name} tool call in the answer "
                                  f"(blocks: {kinds or 'none'}, "
                                  f"stop_reason: {getattr(response, 'stop_reason', None)})")
    data = getattr(call, "input", None)
    if not isinstance(data, dict):
        raise ServiceError("llm", f"{tool_name}: input is not an object")
    label = data.get("label")
    if label not in labels:
        raise ServiceError("llm", f"{tool_name}: label {label!r} is not one of {list(labels)}")
    confidence = data.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise ServiceError("llm", f"{tool_name}: confidence {confidence!r} is not a number")
    if not 0.0 <= float(confidence) <= 1.0:
        raise ServiceError("llm", f"{tool_name}: confidence {confidence!r} is outside 0..1")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise ServiceError("llm", f"{tool_name}: reason is not a string")
    return LLMVerdict(label=label, confidence=float(confidence), reason=reason.strip(),
                      usage=_usage(response))
