"""The destination seam: each destination is one module behind one protocol, found through one registry."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

from conversion_sync.config.syncs import DestinationType
from conversion_sync.store.sql_text import json_object_sql, quote_ident, quote_literal, quote_qualified
from conversion_sync.syncs import destinations
from conversion_sync.syncs.destinations import DESTINATIONS, Destination, destination_for

from .conftest import SyncWorld

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
    assert quote_literal("50%") == "'50%%'"  # psycopg reads %% as %
    assert quote_ident("growth%") == '"growth%%"'
    assert json_object_sql([("o'k", "1")]) == "jsonb_build_object('o''k', 1)"
    assert json_object_sql([]) == "'{}'::jsonb"


def test_event_properties_named_with_quotes_and_percent_signs_land(world: SyncWorld) -> None:
    """An events query's extra columns become properties under whatever names the warehouse gives them; the
    names reach the statements as quoted literals, so a quote or a `%` (which the driver reads as the start
    of a placeholder) is only data. Before: such a name failed the run."""
    world.warehouse(
        """CREATE TABLE ev AS SELECT * FROM (VALUES
            ('x1', 'a@example.com', 'signup', TIMESTAMP '2026-01-01', 12, 'it''s'),
            ('x2', 'b@example.com', 'signup', NULL, 5, 'no time')
        ) t(message_id, email, event_name, timestamp, "growth%", "it's %(sync)s")"""
    )
    world.add_sync("ev", "SELECT * FROM ev", destination={"type": "events"})
    outcome = world.run("ev")
    assert (outcome.counts["added"], outcome.counts["rejected"]) == (1, 1)
    assert world.scalar("SELECT properties FROM events") == {"growth%": 12, "it's %(sync)s": "it's"}
    [(row,)] = world.sql("SELECT row FROM sync_rejections")
    assert (row["growth%"], row["it's %(sync)s"]) == ("5", "no time")
