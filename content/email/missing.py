"""Render a template and collect every name it needed but did not get, instead of stopping at the first.

The worker renders with StrictUndefined (a missing value fails the learner). Checks before that (a job's
template against its data, a template on publish against sample data) render in the same sandbox with an
undefined that notes the name wherever StrictUndefined would raise and renders as empty, so one answer lists
every missing name. ``is defined`` tests and the ``default`` filter note nothing: a guarded value is optional.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, NoReturn

import jinja2
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from content.email.templates import EmailTemplate

_found: ContextVar[set[str]] = ContextVar("missing_template_names")


class _Recording(jinja2.ChainableUndefined):
    """Renders as empty and notes the name wherever StrictUndefined (the worker's choice) would raise."""

    __slots__ = ()

    def _note(self) -> None:
        # Only top-level names: an attribute missing on a value the job did give may be one learner's matter.
        if self._undefined_obj is jinja2.utils.missing and self._undefined_name:
            found = _found.get(None)
            if found is not None:
                found.add(self._undefined_name)

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._note()
        super()._fail_with_undefined_error(*args, **kwargs)
        raise AssertionError("unreachable")

    def __str__(self) -> str:
        self._note()
        return ""

    def __iter__(self) -> Iterator[Any]:
        self._note()
        return iter(())

    def __bool__(self) -> bool:
        self._note()
        return False

    def __len__(self) -> int:
        self._note()
        return 0

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__":
            raise AttributeError(name)
        self._note()
        return self

    __getitem__ = __getattr__


# jinja2.Undefined binds its operators (``+``, ``<``, calls ...) to the base _fail_with_undefined_error when the
# class is made; point them at the noting one.
for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
              "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pos__", "__neg__", "__call__", "__lt__",
              "__le__", "__gt__", "__ge__", "__int__", "__float__", "__complex__", "__pow__", "__rpow__"):
    setattr(_Recording, _name, _Recording._fail_with_undefined_error)


class UnsafeTemplate(Exception):
    """The sandbox refused something the template did (reaching Python internals, changing data)."""


class MissingNames:
    """Compiles templates with the recording undefined (cached per template) and lists what each needs."""

    def __init__(self, keep: int = 256) -> None:
        common: dict[str, Any] = {"undefined": _Recording, "keep_trailing_newline": True}
        self.text_env = ImmutableSandboxedEnvironment(autoescape=False, **common)
        self.html_env = ImmutableSandboxedEnvironment(autoescape=True, **common)
        self._keep = keep
        self._compiled: OrderedDict[EmailTemplate, tuple[jinja2.Template, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def compiled(self, template: EmailTemplate) -> tuple[jinja2.Template, ...]:
        """Subject, text and HTML compiled; raises jinja2.TemplateSyntaxError."""
        with self._lock:
            found = self._compiled.get(template)
            if found is not None:
                self._compiled.move_to_end(template)
                return found
        found = (self.text_env.from_string(template.subject), self.text_env.from_string(template.text),
                 self.html_env.from_string(template.html))
        with self._lock:
            self._compiled[template] = found
            while len(self._compiled) > self._keep:
                self._compiled.popitem(last=False)
        return found

    def missing(self, template: EmailTemplate, context: Mapping[str, Any]) -> tuple[str, ...]:
        """The top-level names the template needs that ``context`` lacks, sorted. Raises UnsafeTemplate and
        jinja2.TemplateSyntaxError; any other error of the sample's own values is one learner's matter."""
        return missing_in(self.compiled(template), context)


def missing_in(templates: Sequence[jinja2.Template], context: Mapping[str, Any]) -> tuple[str, ...]:
    found: set[str] = set()
    token = _found.set(found)
    try:
        for template in templates:
            try:
                template.render(context)
            except jinja2.UndefinedError:
                pass  # the name is noted; the other parts may name more
            except jinja2.exceptions.SecurityError as exc:
                raise UnsafeTemplate(exc.message or str(exc)) from None
            except Exception:  # noqa: BLE001, S110 - an error of the sample's own values is not a missing name
                pass
    finally:
        _found.reset(token)
    return tuple(sorted(found))
