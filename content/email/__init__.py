"""Email content: templates and their rendering, the MIME composer, Message-IDs and address checks."""

from content.email.addresses import address_problem, ascii_address, message_id_for
from content.email.compose import boundary_for, compose_message
from content.email.templates import (
    EmailRenderer,
    EmailTemplate,
    RenderedEmail,
    TemplateRenderError,
    TemplateStore,
    UnknownTemplate,
    valid_template_id,
)

__all__ = [
    "EmailRenderer",
    "EmailTemplate",
    "RenderedEmail",
    "TemplateRenderError",
    "TemplateStore",
    "UnknownTemplate",
    "address_problem",
    "ascii_address",
    "boundary_for",
    "compose_message",
    "message_id_for",
    "valid_template_id",
]
