"""How `steps.apply()` classifies a failure: the one place that says transient or permanent.

The webhook runner retries a request for hours only when its errors are transient; a bug or
a bad input recorded as transient would be retried 12 times for nothing (issue 10).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from handler_cli.context import Context
from handler_cli.document import Document
from handler_cli.services import ServiceError
from handler_cli.steps import MissingInput, Step, apply
from tests.conftest import sample

StepFn = Callable[[Document, Context], Document]


@dataclass(frozen=True)
class _Given(Step):
    """A step whose body is given by the test (the real `apply` runs it)."""

    body: StepFn | None = field(default=None, compare=False)

    def load(self) -> StepFn:
        assert self.body is not None
        return self.body


def _raising(exc: Exception) -> StepFn:
    def run(doc: Document, ctx: Context) -> Document:
        raise exc

    return run


@pytest.mark.parametrize(("exc", "transient"), [
    (ServiceError("hubspot", "HTTP 503"), True),
    (ServiceError("hubspot", "property refused", transient=False), False),
    (MissingInput("ticket_id", "ticket"), False),
    (UnicodeEncodeError("ascii", "jéan", 1, 2, "ordinal not in range"), False),
    (ValueError("Invalid IPv6 URL"), False),
    (RuntimeError("a bug"), False),
])
def test_only_a_service_saying_so_makes_a_failure_transient(
    ctx: Context, exc: Exception, transient: bool
) -> None:
    doc = Document.model_validate(sample("support"))
    assert apply(_Given("contact", "contact", "", body=_raising(exc)), doc, ctx) is False
    [error] = doc.errors
    assert (error.step, error.transient) == ("contact", transient)


def test_a_success_clears_the_error_and_its_flag(ctx: Context) -> None:
    doc = Document.model_validate(sample("support"))
    apply(_Given("contact", "contact", "", body=_raising(ServiceError("crm", "down"))), doc, ctx)
    assert doc.errors and doc.errors[0].transient
    assert apply(_Given("contact", "contact", "", body=lambda d, c: d), doc, ctx) is True
    assert doc.errors == []


def test_the_flag_survives_the_document_round_trip(ctx: Context) -> None:
    doc = Document.model_validate(sample("support"))
    apply(_Given("ticket", "ticket", "", body=_raising(ServiceError("crm", "429"))), doc, ctx)
    again = Document.model_validate_json(doc.to_json())
    assert again.errors[0].transient is True
