"""The asset graph the syncs make, checked before Dagster sees it: cycles, and `after:`/`deps:` references.

A sync's asset depends on its `after:` syncs, the keys its `deps:` names and the tables its query reads; the
store table it writes depends on it. Dagster refuses a code location whose graph has a cycle (every asset of
it, not only those in the cycle), so a cycle is found here and its syncs reported as broken instead.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from conversion_sync.config.syncs import SyncConfig
from conversion_sync.syncs.lineage import (
    KeyPath,
    destination_key_path,
    query_tables,
    sync_key_path,
    sync_name_of_key,
    table_key_path,
)

LinkKind = Literal["after", "deps", "query", "writes"]


@dataclass(frozen=True)
class Link:
    """`downstream` depends on `upstream` because of `kind` in the config of sync `sync`."""

    downstream: KeyPath
    upstream: KeyPath
    kind: LinkKind
    sync: str
    table: str = ""


@dataclass(frozen=True)
class Cycle:
    """A cycle through a sync: the links from its asset back to it, in order."""

    sync: str
    links: list[Link]

    @property
    def config_key(self) -> str:
        """The key of the sync's file whose link starts the cycle (after, deps or query)."""
        return self.links[0].kind

    def path(self) -> str:
        """`a -> b -> a`: syncs by name, other assets by key."""
        nodes = [self.links[0].downstream, *(link.upstream for link in self.links)]
        return " -> ".join(_node_text(node) for node in nodes)

    def message(self) -> str:
        reasons = "; ".join(_link_text(link) for link in self.links)
        return (
            f"forms a cycle: {self.path()} ({reasons}); Dagster cannot order assets that depend on each other "
            "and would refuse the whole code location, so remove one of these links"
        )


def _node_text(node: KeyPath) -> str:
    name = sync_name_of_key(node)
    return name if name is not None else "/".join(node)


def _link_text(link: Link) -> str:
    down, up = _node_text(link.downstream), _node_text(link.upstream)
    if link.kind == "after":
        return f"{down} runs after {up}"
    if link.kind == "deps":
        return f"{down} lists {'/'.join(link.upstream)} in deps"
    if link.kind == "query":
        return f"{down}'s query reads {link.table} (asset {up})"
    return f"{down} is written by {up}"


def sync_links(syncs: Mapping[str, SyncConfig], warehouses: Mapping[str, object]) -> list[Link]:
    """Every dependency the syncs' config makes, as links between asset key paths."""
    links: list[Link] = []
    for name, sync in syncs.items():
        own = sync_key_path(name)
        warehouse = warehouses.get(sync.warehouse)
        kind = getattr(warehouse, "type", None)
        prefix: Sequence[str] = getattr(warehouse, "asset_key_prefix", ())
        links.extend(Link(own, sync_key_path(u), "after", name) for u in sync.after if u != name)
        links.extend(Link(own, tuple(key.split("/")), "deps", name) for key in sync.deps)
        for table in query_tables(sync.query, kind).tables:
            links.append(Link(own, table_key_path(table, prefix), "query", name, ".".join(table)))
        links.append(Link(destination_key_path(sync.destination), own, "writes", name))
    return links


def find_cycles(syncs: Mapping[str, SyncConfig], warehouses: Mapping[str, object]) -> dict[str, Cycle]:
    """For each sync on a cycle, the shortest cycle through it: the graph's strongly connected components
    say which syncs are on one, then a breadth-first search within its component finds the cycle."""
    upstream: dict[KeyPath, list[Link]] = {}
    for link in sync_links(syncs, warehouses):
        upstream.setdefault(link.downstream, []).append(link)
    component = _components(upstream)
    sizes = Counter(component.values())
    cycles: dict[str, Cycle] = {}
    for name in syncs:
        start = sync_key_path(name)
        on_cycle = sizes[component[start]] > 1 or any(
            link.upstream == start for link in upstream.get(start, [])
        )
        if on_cycle:
            cycles[name] = Cycle(name, _shortest_cycle(start, upstream, component))
    return cycles


def _components(upstream: Mapping[KeyPath, list[Link]]) -> dict[KeyPath, int]:
    """Tarjan's strongly connected components (iterative): each node's component number."""
    index: dict[KeyPath, int] = {}
    low: dict[KeyPath, int] = {}
    on_stack: set[KeyPath] = set()
    stack: list[KeyPath] = []
    component: dict[KeyPath, int] = {}
    number = 0
    for root in list(upstream):
        if root in index:
            continue
        work: list[tuple[KeyPath, int]] = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            links = upstream.get(node, [])
            if position < len(links):
                work.append((node, position + 1))
                child = links[position].upstream
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                number += 1
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component[member] = number
                    if member == node:
                        break
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return component


def _shortest_cycle(
    start: KeyPath, upstream: Mapping[KeyPath, list[Link]], component: Mapping[KeyPath, int]
) -> list[Link]:
    """The links of the shortest path from `start` back to itself, within its component."""
    reached_by: dict[KeyPath, Link] = {}
    queue: deque[KeyPath] = deque([start])
    while queue and start not in reached_by:
        node = queue.popleft()
        for link in upstream.get(node, []):
            if link.upstream not in reached_by and component.get(link.upstream) == component[start]:
                reached_by[link.upstream] = link
                queue.append(link.upstream)
    return _path_back(start, reached_by)


def _path_back(start: KeyPath, reached_by: Mapping[KeyPath, Link]) -> list[Link]:
    links = [reached_by[start]]
    while links[-1].downstream != start:
        links.append(reached_by[links[-1].downstream])
    return links[::-1]
