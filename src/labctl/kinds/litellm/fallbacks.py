"""LiteLLM's fallback graph, as labctl reasons about it: the catch-all, the order a request
walks, the longest walk and cycles. Pure functions of ``{model: [fallback, ...]}``, shared
by the inventory's checks, the gateway renderer, doctor and gateway check."""

from __future__ import annotations

CATCH_ALL = "*"


def fallback_order(fallbacks: dict[str, list[str]], primary: str) -> list[str]:
    """The models LiteLLM may try for a request to ``primary``, in order, primary first.

    A failed fallback target is retried through its own chain (or the catch-all) before
    the next one in the caller's chain; no model is attempted twice in one request.
    Each attempt after the primary is one hop counted against max_fallbacks.
    """
    tried: list[str] = []

    def walk(model: str) -> None:
        tried.append(model)
        for nxt in fallbacks.get(model, fallbacks.get(CATCH_ALL, [])):
            if nxt not in tried:
                walk(nxt)

    walk(primary)
    return tried


def longest_fallback_walk(fallbacks: dict[str, list[str]]) -> list[str]:
    """The longest walk any chain can take (see fallback_order), or [] with no chains."""
    models = {m for chain in fallbacks.values() for m in chain} | (set(fallbacks) - {CATCH_ALL})
    walks = [fallback_order(fallbacks, m) for m in sorted(models)]
    return max(walks, key=len, default=[]) if any(len(w) > 1 for w in walks) else []


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle of length >= 2 in the fallback graph, as a closed walk, or None.

    LiteLLM follows a fallback's own fallbacks, so a -> b with b -> a loops until retries
    run out. Self-loops are reported separately.
    """
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None
