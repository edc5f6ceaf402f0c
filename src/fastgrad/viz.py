"""Pictures of a graph, as in the lecture: `draw_dot(root)` draws every node reachable
through `_prev` as a record (label | data | grad), with an op node feeding each result.

`trace(root)` returns the nodes and edges; it is iterative, so it works on graphs of any
depth. `draw_dot` needs the `graphviz` package (`pip install fastgrad[viz]`) and, to render
the picture, Graphviz's `dot` program; the DOT source (`.source`) needs neither. In a
notebook without `dot`, the graph shows as its DOT source under one line saying what to
install, instead of a traceback.
"""
from __future__ import annotations

import functools
from typing import Any

from fastgrad.engine import Value


def trace(root: Value) -> tuple[set[Value], set[tuple[Value, Value]]]:
    """(nodes, edges) reachable from root; an edge (child, parent) for each child in
    parent._prev."""
    nodes: set[Value] = set()
    edges: set[tuple[Value, Value]] = set()
    stack = [root]
    while stack:
        v = stack.pop()
        if v not in nodes:
            nodes.add(v)
            for child in v._prev:
                edges.add((child, v))
                stack.append(child)
    return nodes, edges


NO_DOT = ("draw_dot: Graphviz's dot program is not installed, so here is the graph's DOT "
          "source instead of its picture (install Graphviz: apt install graphviz, brew "
          "install graphviz or conda install graphviz)")


@functools.cache
def _digraph() -> Any:
    """graphviz.Digraph, shown in a notebook as its DOT source where `dot` is missing
    (made on first use: graphviz is an optional dependency)."""
    try:
        from graphviz import Digraph, ExecutableNotFound
    except ImportError as exc:
        raise ImportError("draw_dot needs the graphviz package: pip install graphviz "
                          "(or fastgrad[viz])") from exc

    class Picture(Digraph):
        def _repr_mimebundle_(self, include: Any = None, exclude: Any = None,
                              **kwargs: Any) -> dict[str, Any]:
            try:
                return super()._repr_mimebundle_(include, exclude, **kwargs)
            except ExecutableNotFound:
                return {'text/plain': f"{NO_DOT}\n{self.source}"}

    return Picture


def draw_dot(root: Value, format: str = 'svg', rankdir: str = 'LR') -> Any:
    """A graphviz.Digraph of root's graph: a record per node, labelled with its label,
    data and grad; an op node ('+', '*', 'tanh', ...) between a result and its children.
    rankdir is 'LR' (left to right) or 'TB' (top to bottom)."""
    if rankdir not in ('LR', 'TB'):
        raise ValueError(f"rankdir must be 'LR' or 'TB', not {rankdir!r}")
    nodes, edges = trace(root)
    dot = _digraph()(format=format, graph_attr={'rankdir': rankdir})
    # nodes sorted by what they show, so that the same graph gives the same DOT text
    for n in sorted(nodes, key=lambda n: (str(n.label), n.data, n._op, id(n))):
        uid = str(id(n))
        dot.node(name=uid, label=f"{{ {n.label} | data {n.data:.4f} | grad {n.grad:.4f} }}",
                 shape='record')
        if n._op:
            dot.node(name=uid + str(n._op), label=str(n._op))
            dot.edge(uid + str(n._op), uid)
    for child, parent in sorted(edges, key=lambda e: (id(e[0]), id(e[1]))):
        dot.edge(str(id(child)), str(id(parent)) + str(parent._op))
    return dot
