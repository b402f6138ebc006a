"""The destination seam: each destination is one module behind one protocol, found through one registry."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

from conversion_sync.config.syncs import DestinationType
from conversion_sync.store.sql_text import json_object_sql, quote_ident, quote_literal, quote_qualified
from conversion_sync.syncs import destinations
from conversion_sync.syncs.destinations import DESTINATIONS, Destination, destination_for

ENGINE_MODULES = ("validation.py", "runner.py", "writers.py")
"""The shared engine: nothing in it may name a destination type."""


def test_the_registry_lists_each_destination_once_each_in_its_own_module() -> None:
    assert sorted(DESTINATIONS) == ["contacts", "custom_objects", "events"]
    assert sorted(DESTINATIONS) == sorted(typing.get_args(DestinationType)), "the sync file's types"
    modules = set()
    for kind, destination in DESTINATIONS.items():
        assert isinstance(destination, Destination), f"{kind} implements the protocol"
        assert destination.kind == kind and destination_for(kind) is destination
        module = inspect.getmodule(type(destination))
        assert module is not None and module.__name__ == f"conversion_sync.syncs.destinations.{kind}"
        modules.add(module.__name__)
    assert len(modules) == 3


def test_the_shared_engine_names_no_destination() -> None:
    """Adding a destination touches no shared module: no `kind ==` switch, no destination type by name."""
    engine = Path(destinations.__file__).parent.parent
    for name in ENGINE_MODULES:
        source = (engine / name).read_text()
        assert "kind ==" not in source and "kind !=" not in source, name
        for kind in DESTINATIONS:
            assert f'"{kind}"' not in source and f"'{kind}'" not in source, (name, kind)


def test_identifiers_and_literals_are_quoted_whatever_they_hold() -> None:
    assert quote_ident("c0") == '"c0"'
    assert quote_ident('a"b; DROP TABLE contacts') == '"a""b; DROP TABLE contacts"'
    assert quote_qualified("conversion_staging", "stage_x") == '"conversion_staging"."stage_x"'
    assert quote_literal("it's") == "'it''s'"
    assert json_object_sql([("o'k", "1")]) == "jsonb_build_object('o''k', 1)"
    assert json_object_sql([]) == "'{}'::jsonb"
