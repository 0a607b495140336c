"""Shared prompt prefixes, planned on token ids alone (no framework imported): which prompts go
into one batch, and which cache slots of a left-padded batch a first, smaller pass can fill.

The prompts of a benchmark share the system prompt and the chat template; ConvFinQA's turns of
one conversation also share the document and the earlier turns, and the conversations on one
document share the document. A backend (transformers, mlx) runs each shared prefix once, in a
pass with one row per head, copies its keys and values into the first ``start`` slots of every
row of the batch, and runs the model on the remaining slots only; the heads' pass is planned the
same way, so a prefix shared one level further down is also computed once. Every pass stays an
ordinary left-padded batch, so sliding windows and positions count as they would without sharing.
``benchmarks/prefill_plan.py`` counts the slots computed on the seed's prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a separate pass
GROUP_SHARE = 0.5  # prompts sharing this much of the shorter one (beyond the common part) are batched together
SHARE_PAYOFF = 1.5  # a prefix pass runs when it saves this many times the tokens it costs
MAX_DEPTH = 4  # prefix passes below one another, at most
MAX_CANDIDATES = 64  # main-pass widths a plan weighs
# What one more forward pass costs beyond its slots, in slots (estimates): on a GPU kernel launches
# for every layer (~10 ms, ~500 prompt tokens of a 4B model); on a CPU transformers' own per-pass
# work (SmolLM2-135M on 2 cores: 41 ms for a 1-token pass, ~1,000 prompt tokens/s at best)
PASS_COST_GPU = 512
PASS_COST_CPU = 64


@dataclass(frozen=True)
class PrefixPlan:
    """How a left-padded batch of ``len(owner)`` rows shares prefixes.

    ``start``: cache slots filled from the prefix pass (the main pass runs the slots after them);
    ``heads[g]``: prefix tokens head ``g`` runs in the prefix pass (taken from ``prefixes[g]``);
    ``owner[r]``: row r's head; ``reals[r]``: row r's tokens among its first ``start`` slots
    (the rest is padding). ``sub``: the plan of the prefix pass itself (the heads' prefixes
    share prefixes too), or None."""

    start: int
    heads: list[int]
    owner: list[int]
    prefixes: list[list[int]]
    reals: list[int]
    sub: PrefixPlan | None = None

    @property
    def span(self) -> int:
        return max(self.heads)

    @property
    def offsets(self) -> list[int]:
        """Per row: where its head's prefix starts in the prefix pass (left padded to ``span``)."""
        return [self.span - self.heads[g] for g in self.owner]

    @property
    def slots(self) -> list[list[int]]:
        """``slots[r][t]``: for row r's slot t < start, the position in the prefix pass's row
        ``owner[r]`` whose key and value it takes: slot t holds the row's token t - (start -
        real), which sits at offset + that index. Padding slots (masked anyway) point at a real
        key. Backends compute the same with array operations."""
        return [
            [offset + max(t - (self.start - real), 0) for t in range(self.start)]
            for offset, real in zip(self.offsets, self.reals, strict=True)
        ]


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


def prefix_plan(ids: list[list[int]], pass_cost: int = 0) -> PrefixPlan | None:
    """How to share prefixes in a left-padded batch of ``ids``, or None when sharing saves too
    little. Every row keeps at least one token for the main pass.

    The main pass runs the last ``rest`` slots of every row; each row's tokens before them come
    from the prefix pass, out of the row of a *head*: a longer row it shares them with
    (``_covers``), or itself when none does. The prefix pass runs each head's tokens before its
    last ``rest``, left padded to the longest, and is planned the same way (``PrefixPlan.sub``),
    so sharing goes as deep as the prompts do: a ConvFinQA turn takes all but its closing
    template tokens from its conversation's last turn, the last turns of conversations on one
    document share the document one level down, and every prompt shares the system prompt and
    chat template. FPB- and MedMCQA-like prompts (only the system prompt in common) get the
    longest as their head, and where lengths differ much the longer ones too, so short rows pad
    less. Of the widths ``rest`` weighed, the plan keeps the one whose passes compute the fewest
    slots, padding included, each pass below counted ``pass_cost`` slots more (what one more
    forward pass costs on the device, beyond its slots: ``PASS_COST_GPU``, ``PASS_COST_CPU``).
    ``_plan`` tells how."""
    return _plan(ids, 0, pass_cost)[1]


def _plan(ids: list[list[int]], depth: int, pass_cost: int) -> tuple[int, PrefixPlan | None]:
    """(cost in slots, plan) for ``ids``: the plan of least cost, or None (one plain pass,
    ``rows x width`` slots) when no plan costs less or saves ``SHARE_PAYOFF`` times its prefix
    pass. Two widths are followed down: the one of least cost if the prefix pass shared nothing
    more (``rows x rest + heads x their longest prefix``), and the narrowest."""
    width = max(len(row) for row in ids)
    flat = len(ids) * width
    if len(ids) < 2 or depth >= MAX_DEPTH:
        return flat, None
    lengths = [len(row) for row in ids]
    cover, by = _covers(ids)
    # a row with a cover rides on it once rest >= its tail beyond the shared part
    tails = [n - c if b is not None else None for n, c, b in zip(lengths, cover, by, strict=True)]

    def leaders(rest: int) -> list[int]:  # the rows whose own prefix the prefix pass runs, longest first
        rows = [r for r, t in enumerate(tails) if (t is None or t > rest) and lengths[r] > rest]
        return sorted(rows, key=lambda r: -lengths[r])

    candidates = [r for r in sorted({max(t, 1) for t in tails if t is not None}) if width - r >= MIN_SHARED_PREFIX]
    if not candidates:
        return flat, None
    if len(candidates) > MAX_CANDIDATES:  # evenly spread, the narrowest and widest kept
        step = (len(candidates) - 1) / (MAX_CANDIDATES - 1)
        candidates = [candidates[round(k * step)] for k in range(MAX_CANDIDATES)]

    def single(rest: int) -> int:
        heads = leaders(rest)
        return len(ids) * rest + len(heads) * max(lengths[r] - rest for r in heads)

    best: tuple[int, int, PrefixPlan | None] | None = None  # (cost, rest, prefix pass plan)
    for rest in {min(candidates, key=single), candidates[0]}:
        heads = leaders(rest)
        slots, sub = _plan([ids[r][: lengths[r] - rest] for r in heads], depth + 1, pass_cost)
        saved, cost = flat - len(ids) * rest, len(ids) * rest + slots + pass_cost
        if saved >= SHARE_PAYOFF * slots and cost < flat and (best is None or cost < best[0]):
            best = (cost, rest, sub)
    if best is None:
        return flat, None
    total, rest, sub = best
    start = width - rest

    def head(row: int) -> int:  # follow covers while the shared part holds the row's prefix
        while (up := by[row]) is not None and lengths[row] - cover[row] <= rest:
            row = up
        return row

    order = leaders(rest)
    number = {r: k for k, r in enumerate(order)}
    # rows with no token before the last ``rest`` slots read any head's keys (masked)
    owner = [number[head(r)] if lengths[r] > rest else 0 for r in range(len(ids))]
    heads = [lengths[r] - rest for r in order]
    prefixes = [ids[r][: lengths[r] - rest] for r in order]
    reals = [max(n - rest, 0) for n in lengths]
    return total, PrefixPlan(start, heads, owner, prefixes, reals, sub)


def _covers(ids: list[list[int]]) -> tuple[list[int], list[int | None]]:
    """For each row, the longest prefix it shares with a row ranked above it (longer, or as long
    and later), and that row (None for the top row of its kind). In sorted order the rows
    sharing most with a row are its neighbours, and sharing only shrinks farther away: the
    first row ranked above it on each side is the best there."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    near = [common_length(ids[a], ids[b]) for a, b in zip(order, order[1:], strict=False)]
    rank = [(len(row), i) for i, row in enumerate(ids)]
    cover = [0] * len(ids)
    by: list[int | None] = [None] * len(ids)
    for k, row in enumerate(order):
        for step in (-1, 1):
            shared, j = len(ids[row]), k
            while 0 <= j + step < len(order) and shared > cover[row]:
                shared = min(shared, near[min(j, j + step)])
                j += step
                if rank[order[j]] > rank[row]:
                    if by[row] is None or shared > cover[row]:
                        cover[row], by[row] = shared, order[j]
                    break
    return cover, by
