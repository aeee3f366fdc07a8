"""Statistics over the job's training seeds: means, standard deviations, paired differences and their 95% Student t
intervals, and the verdict on each of the paper's orderings."""

import math
from dataclasses import dataclass
from statistics import fmean, stdev


def t_975(df: int) -> float:
    """Student's t quantile t(0.975; df): the half-width factor of a two-sided 95% interval (scipy's)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Estimate:
    """A mean over K training seeds' values, their sample standard deviation (K - 1 in the denominator) and the
    mean's 95% Student t interval (K - 1 degrees of freedom). With one seed, neither of the last two exists: None."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return fmean(self.values)

    @property
    def std(self) -> float | None:
        return stdev(self.values) if len(self.values) > 1 else None

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.std is None:
            return None
        half = t_975(len(self.values) - 1) * self.std / math.sqrt(len(self.values))
        return self.mean - half, self.mean + half

    def seeds_for(self, half_width: float, most: int = 1000) -> int | None:
        """How many seeds would give an interval of this half-width, were their spread this one's: the least K >= 2
        with t(0.975; K - 1) * std / sqrt(K) <= half_width (None: one value, no spread to go by; or more than
        `most`)."""
        if self.std is None:
            return None
        return next((k for k in range(2, most + 1) if t_975(k - 1) * self.std / math.sqrt(k) <= half_width), None)

    @property
    def excludes_zero(self) -> bool | None:
        return None if self.interval is None else self.interval[0] > 0 or self.interval[1] < 0


def paired_difference(values, baseline) -> Estimate:
    """The per-seed differences values[s] - baseline[s]: both models share seed s's data order, initial weights and
    clustering, so pairing removes what the seed does to both."""
    return Estimate(tuple(a - b for a, b in zip(values, baseline, strict=True)))


def chance_ceiling(num_classes: int, num_guesses: int) -> float:
    """The top-1 (%) that guessing stays at or under with 97.5% probability, one of `num_classes` classes picked at
    random for each of `num_guesses` images (a test set's images times the seeds its mean is over): a model's top-1 at
    or under it is not told apart from guessing."""
    from scipy.stats import binom

    return 100 * float(binom.ppf(0.975, num_guesses, 1 / num_classes)) / num_guesses


def ordering_verdict(relation: str, difference: Estimate, at_chance: bool = False) -> tuple[str, str]:
    """(whether the paper's ordering `a relation b` holds here, whether the interval of a - b excludes zero).

    No verdict where the difference cannot resolve the ordering: with one seed (no spread to judge it by), or with
    both models at chance (it is then a difference of guesses). Otherwise '>' holds when the mean paired difference is
    positive, '~' when the interval contains zero: no difference was detected (which is not evidence of equality)."""
    excluded = difference.excludes_zero
    excludes_zero = "no interval (one seed)" if excluded is None else "yes" if excluded else "no"
    unresolved = [why for why, applies in (("one seed", excluded is None), ("both at chance", at_chance)) if applies]
    if unresolved:
        return f"cannot tell ({', '.join(unresolved)})", excludes_zero
    if relation == ">":
        return ("yes" if difference.mean > 0 else "no"), excludes_zero
    return ("no" if excluded else "yes"), excludes_zero


def mean_and_std(estimate: Estimate, digits: int = 1) -> str:
    mean = f"{estimate.mean:.{digits}f}"
    return mean if estimate.std is None else f"{mean} ± {estimate.std:.{digits}f}"


def interval_text(estimate: Estimate) -> str:
    if estimate.interval is None:
        return "none (one seed)"
    low, high = estimate.interval
    return f"[{low:+.2f}, {high:+.2f}]"
