"""Compact letter displays: which norms of a backbone differ from which."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

from bench.results.stats.descriptive import Seeds, values_of
from bench.results.stats.significance import compare, holm


def by_mean(acc_by_norm: Mapping[str, Seeds]) -> list[str]:
    """Norms with at least one value, best mean first; ties by name so the order is stable."""
    means = {norm: float(values_of(v).mean()) for norm, v in acc_by_norm.items() if v}
    return sorted(means, key=lambda norm: (-means[norm], norm))


def _letter(index: int) -> str:
    """The index-th letter of a display: a-z, then A-Z, then numbered (more than 52 groups)."""
    if index < 26:
        return chr(ord("a") + index)
    if index < 52:
        return chr(ord("A") + index - 26)
    return f"({index + 1})"


def compact_letters(order: Sequence[str], different: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A compact letter display: two names share a letter iff their pair is not in ``different``.

    Piepho's insert-absorb algorithm (J. Comput. Graph. Stat. 13, 2004): start from one group
    holding every name; for each significant pair (i, j), split each group holding both into a
    copy without i and a copy without j; then drop every group contained in another. Splitting
    separates only the pair (i, j), so a non-significant pair always stays together somewhere,
    and the surviving groups are the maximal sets of mutually non-different names. Groups are
    lettered in ``order`` (best mean first): the group holding the earliest name gets ``a``;
    among groups with the same earliest name, the one whose next name comes first, and so on.

    Args:
        order: The names, best mean first.
        different: Pairs of names that differ significantly (either order).

    Returns:
        Each name's letters, in alphabetical order (``"ab"``).
    """
    position = {name: i for i, name in enumerate(order)}
    groups: set[frozenset[int]] = {frozenset(range(len(order)))}
    for a, b in sorted({tuple(sorted((position[a], position[b]))) for a, b in different}):
        split: set[frozenset[int]] = set()
        for group in groups:
            if a in group and b in group:
                split |= {group - {a}, group - {b}}
            else:
                split.add(group)
        groups = {g for g in split if g and not any(g < h for h in split)}
    lettered = sorted(groups, key=sorted)
    return {
        name: "".join(_letter(k) for k, group in enumerate(lettered) if position[name] in group)
        for name in order
    }


def letter_display(
    acc_by_norm: Mapping[str, Seeds], alpha: float = 0.05, confidence: float = 0.95
) -> dict[str, str | None]:
    """Compact letter display of a backbone: norms sharing a letter are not significantly different.

    The rule:

    1. Only norms with at least 2 seeds can be tested; the others get None ("not ranked").
    2. Every pair of testable norms is compared with :func:`compare` (paired t-test on shared
       seeds, else Welch), and the p-values are Holm-corrected across ALL pairs of the backbone:
       the family is every pairwise statement the display makes, so the chance of any false
       "differs" anywhere in the display is at most alpha.
    3. Pairs with a corrected p <= alpha are "different"; :func:`compact_letters` turns them into
       letters, assigned in order of mean accuracy (the best norm's first group is ``a``).

    Non-significance is not transitive: with a ~ b and b ~ c but a !~ c, a is "a", b "ab", c "b".

    Args:
        acc_by_norm: Accuracy per seed for each norm of one backbone.
        alpha: Family-wise significance level.
        confidence: Confidence level of the intervals (does not affect the letters).

    Returns:
        The letters of each norm that has values; None for norms that could not be tested.
    """
    order = by_mean(acc_by_norm)
    testable = [norm for norm in order if len(acc_by_norm[norm]) >= 2]
    letters: dict[str, str | None] = dict.fromkeys(order)
    if not testable:
        return letters
    pairs = list(combinations(testable, 2))
    raw = [compare(acc_by_norm[a], acc_by_norm[b], confidence).pvalue for a, b in pairs]
    different = [
        pair for pair, p in zip(pairs, holm(raw), strict=True) if p is not None and p <= alpha
    ]
    letters.update(compact_letters(testable, different))
    return letters
