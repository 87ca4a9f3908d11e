"""Every event class of the contract is registered once, so the envelope can decode it and a schema is written."""

from __future__ import annotations

import importlib
import pkgutil

import schemas.events
from schemas.events import BY_CE_TYPE, EVENT_TYPES, Event


def _contract_classes() -> set[type[Event]]:
    for module in pkgutil.iter_modules(schemas.events.__path__):
        importlib.import_module(f"schemas.events.{module.name}")
    found: set[type[Event]] = set()
    todo = list(Event.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("schemas.") and "ce_type" in vars(cls):
            found.add(cls)
    return found


def test_every_event_class_with_a_type_is_registered() -> None:
    missing = {cls.__name__ for cls in _contract_classes()} - {cls.__name__ for cls in EVENT_TYPES}
    assert missing == set()


def test_each_type_is_registered_once_under_its_own_ce_type() -> None:
    assert len(set(EVENT_TYPES)) == len(EVENT_TYPES)
    assert BY_CE_TYPE == {cls.ce_type: cls for cls in EVENT_TYPES}
