"""Statistics over seeds: intervals, tests, Holm, letter displays, power, rank agreement, Friedman.

Every function in this package works on plain numbers (one accuracy per seed) and never imports
torch. Shared assumptions, stated once:

- The per-seed accuracies of one (backbone, norm) cell are independent draws from a normal
  distribution; seeds are the only source of replication. t-based intervals and tests rely on
  this; with few seeds they are approximate for non-normal data.
- Runs of two norms with the same seed share whatever that seed fixes (initialisation and
  augmentation streams; the secret noise and sampling streams are the cell's own since
  ``bench.seeds.STREAM_SCHEME``, shared by seed before it), so their results are paired by seed
  when possible: a paired test removes the variance the seed shares across norms and is valid
  (if less useful) when it shares none.
- A family of tests is one table's comparisons with the baseline, Holm-corrected together;
  the primary tables of a suite with several backbones form one family (`judge_jointly`), so
  its primary claims hold at the family-wise level together.
"""

from bench.results.stats.backbone import (
    BackboneAnalysis,
    NormResult,
    analyse_backbone,
    judge_jointly,
)
from bench.results.stats.descriptive import (
    MeanCI,
    Seeds,
    mean_ci,
)
from bench.results.stats.family import (
    Judged,
    compare_family,
    judge_family,
)
from bench.results.stats.letters import (
    compact_letters,
    letter_display,
)
from bench.results.stats.power import (
    MAX_SEEDS,
    ONE_PP,
    POWER,
    Power,
    backbone_power,
    detectable_difference,
    paired_power,
    seeds_needed,
    t_test_power,
)
from bench.results.stats.ranks import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    AverageRank,
    FriedmanResult,
    RankAgreement,
    average_ranks,
    friedman,
    kendall_tau_b,
    rank_agreement,
)
from bench.results.stats.significance import (
    BASELINE,
    BETTER,
    NO_BASELINE,
    NO_DIFFERENCE,
    NOT_TESTED,
    PAIRED,
    WELCH,
    WORSE,
    Comparison,
    Trend,
    compare,
    holm,
    trend,
    verdict,
)

__all__ = [
    "BASELINE",
    "BETTER",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "MAX_SEEDS",
    "NOT_TESTED",
    "NO_BASELINE",
    "NO_DIFFERENCE",
    "ONE_PP",
    "PAIRED",
    "POWER",
    "WELCH",
    "WORSE",
    "AverageRank",
    "BackboneAnalysis",
    "Comparison",
    "FriedmanResult",
    "Judged",
    "MeanCI",
    "NormResult",
    "Power",
    "RankAgreement",
    "Seeds",
    "Trend",
    "analyse_backbone",
    "average_ranks",
    "backbone_power",
    "compact_letters",
    "compare",
    "compare_family",
    "detectable_difference",
    "friedman",
    "holm",
    "judge_family",
    "judge_jointly",
    "kendall_tau_b",
    "letter_display",
    "mean_ci",
    "paired_power",
    "rank_agreement",
    "seeds_needed",
    "t_test_power",
    "trend",
    "verdict",
]
