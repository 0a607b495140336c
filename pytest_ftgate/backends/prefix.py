"""Shared prompt prefixes, planned on token ids alone (no framework imported): which prompts go
into one batch, and which cache slots of a left-padded batch a first, smaller pass can fill.

The prompts of a benchmark share the system prompt and the chat template; ConvFinQA's turns of
one conversation also share the document and the earlier turns. A backend (transformers, mlx)
runs each shared prefix once, in a pass with one row per group, copies its keys and values into
the first ``start`` slots of every row of the batch, and runs the model on the remaining slots
only. The batch stays an ordinary left-padded one, so sliding windows and positions count as
they would without sharing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a separate pass
GROUP_SHARE = 0.5  # prompts sharing this much of the shorter one (beyond the common part) are batched together
SHARE_PAYOFF = 1.5  # a prefix pass runs when it saves this many times the tokens it costs


@dataclass(frozen=True)
class PrefixPlan:
    """How a left-padded batch of ``len(owner)`` rows shares prefixes.

    ``start``: cache slots filled from the prefix pass (the main pass runs the slots after them);
    ``heads[g]``: prefix tokens group ``g`` runs in the prefix pass (taken from ``prefixes[g]``);
    ``owner[r]``: row r's group; ``slots[r][t]``: for row r's slot t < start, the position in the
    prefix pass's (left-padded, ``max(heads)`` wide) row ``owner[r]`` whose key and value it
    takes. Padding slots (masked anyway) point at any real key."""

    start: int
    heads: list[int]
    owner: list[int]
    prefixes: list[list[int]]
    slots: list[list[int]]

    @property
    def span(self) -> int:
        return max(self.heads)


def common_length(a: list[int], b: list[int]) -> int:
    """Length of the common token prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_groups(ids: list[list[int]]) -> list[list[int]]:
    """Indices of ``ids`` grouped by a long shared token prefix: sorted by tokens, neighbours join
    a group when, beyond the prefix every prompt shares (system prompt, chat template), they share
    at least ``GROUP_SHARE`` of the shorter one's remaining tokens (and ``MIN_SHARED_PREFIX``).
    ConvFinQA turns of one conversation (document, earlier turns) form one group; FPB and MedMCQA
    prompts stay single."""
    if len(ids) < 2:
        return [[i] for i in range(len(ids))]
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    # in sorted order, the prefix all prompts share is the one the first and last share
    common = common_length(ids[order[0]], ids[order[-1]])
    groups = [[order[0]]]
    for a, b in zip(order, order[1:], strict=False):
        shared = common_length(ids[a], ids[b]) - common
        if shared >= max(MIN_SHARED_PREFIX, GROUP_SHARE * (min(len(ids[a]), len(ids[b])) - common)):
            groups[-1].append(b)
        else:
            groups.append([b])
    return groups


def plan_batches(
    ids: list[list[int]], extra: int, rows_for: Callable[[int], int], limit: int | None = None
) -> list[list[int]]:
    """The prompts' indices cut into batches. Prompts that share a long token prefix with others
    go into the same batch, whole groups together, so the prefix is computed once; the other
    prompts are sorted by length (little padding). Longest first: an out-of-memory error shows
    early. ``rows_for(tokens)`` is the batch size for prompts of that many tokens (``extra`` added
    to each prompt's length); a group larger than that gets a batch of its own (its rows cost
    little more than its head). ``limit`` (a batch size the user chose) caps every batch instead,
    splitting a group where it must."""
    groups = prefix_groups(ids)
    units = [g for g in groups if len(g) > 1]
    singles = sorted((g[0] for g in groups if len(g) == 1), key=lambda i: -len(ids[i]))
    units.sort(key=lambda g: -max(len(ids[i]) for i in g))
    batches: list[list[int]] = []
    for unit_list in (units, [[i] for i in singles]):
        batch: list[int] = []
        rows = 0
        for unit in unit_list:  # longest first: the batch's first unit sizes it
            if limit is None and batch and len(batch) + len(unit) > rows:  # no group is split
                batches.append(batch)
                batch = []
            for index in unit:
                if not batch:
                    rows = limit or max(rows_for(max(len(ids[i]) for i in unit) + extra), len(unit))
                batch.append(index)
                if len(batch) >= rows:
                    batches.append(batch)
                    batch = []
        if batch:
            batches.append(batch)
    return batches


def prefix_plan(ids: list[list[int]]) -> PrefixPlan | None:
    """How to share prefixes in a left-padded batch of ``ids``, or None when sharing saves too
    little. Every row keeps at least one token for the main pass.

    Rows are grouped by ``prefix_groups``; with no group of two or more, the whole batch is one
    group. Each group's longest row is its head: the prefix pass runs the head's tokens, and every
    row of the group takes from it the keys and values of the prefix it shares with the head. A
    ConvFinQA turn shares with the conversation's last turn everything but its own closing
    template tokens (the document, the earlier turns, its question), so the prefix pass computes
    each conversation about once and the main pass only a few tokens per row; FPB and MedMCQA
    rows share the system prompt and chat template. The prefix pass costs (groups x longest
    prefix) tokens, the main pass saves (rows x ``start``)."""
    if len(ids) < 2:
        return None
    groups = prefix_groups(ids)
    if all(len(g) == 1 for g in groups):
        groups = [list(range(len(ids)))]
    lengths = [len(row) for row in ids]
    shared = [0] * len(ids)
    owner = [0] * len(ids)
    leaders = []
    for number, group in enumerate(groups):
        head = max(group, key=lambda i: lengths[i])
        leaders.append(head)
        for i in group:
            common = lengths[i] - 1 if i == head else min(common_length(ids[i], ids[head]), lengths[i] - 1)
            shared[i], owner[i] = (common if common >= MIN_SHARED_PREFIX or i == head else 0), number
    width = max(lengths)
    rest = max(n - s for n, s in zip(lengths, shared, strict=True))
    start = width - rest
    if start < MIN_SHARED_PREFIX:
        return None
    heads = [0] * len(groups)
    for i, n in enumerate(lengths):
        heads[owner[i]] = max(heads[owner[i]], n - rest)
    used = sorted({g for g in owner if heads[g] > 0})
    renumber = {g: k for k, g in enumerate(used)}
    if len(ids) * start < SHARE_PAYOFF * len(used) * max(heads):
        return None
    fallback = used[0]  # rows with no real token in the shared slots read any group's keys (masked)
    owner = [renumber[g if heads[g] > 0 else fallback] for g in owner]
    prefixes = [ids[leaders[g]][: heads[g]] for g in used]
    heads = [heads[g] for g in used]
    # row r's slot t (t < start) holds token t - (start - real) of its prompt, where real = its
    # tokens in those slots (a prefix it shares with its group's head); in the prefix pass that
    # token sits at span - heads[g] + that index
    span = max(heads)
    slots = []
    for row, group in enumerate(owner):
        real = max(lengths[row] - rest, 0)
        offset = span - heads[group]
        slots.append([offset + max(t - (start - real), 0) for t in range(start)])
    return PrefixPlan(start, heads, owner, prefixes, slots)
