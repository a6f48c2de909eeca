"""One engine's measurements and their summary: `Result` pools per-request TTFT/TPOT/e2e over the
repetitions and keeps one record per repetition; `summary` gives the percentiles and the median, min and
max output tok/s; `add_ratios` sets each engine against the first, round by round; `add_factors` does so for
any figures, each in the direction that is better."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


def _pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


@dataclass
class Result:
    """One engine's requests: per-request times pooled over every repetition, and one summary per repetition."""

    engine: str
    ttft_s: list[float] = field(default_factory=list)
    tpot_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    wall_s: float = 0.0
    repetitions: list[dict] = field(default_factory=list)  # per repetition: tokens, wall, tok/s, engine stats

    def add(self, ttft: float | None, tpot: float | None, e2e: float, tokens: int) -> None:
        if ttft is not None:
            self.ttft_s.append(ttft)
        if tpot is not None:
            self.tpot_s.append(tpot)
        self.e2e_s.append(e2e)
        self.output_tokens += tokens

    def close_repetition(self, tokens: int, wall: float, requests: int, **extra) -> None:
        """Record one repetition's totals (call after its requests were `add`ed and `wall_s` grew by `wall`)."""
        self.repetitions.append({"output_tokens": tokens, "wall_s": wall, "output_tok_per_s": tokens / wall,
                                 "requests_per_s": requests / wall, **extra})

    def summary(self) -> dict:
        reps = self.repetitions or [{"output_tok_per_s": self.output_tokens / self.wall_s, "wall_s": self.wall_s,
                                     "requests_per_s": len(self.e2e_s) / self.wall_s, "output_tokens": self.output_tokens}]
        tps = [r["output_tok_per_s"] for r in reps]
        s: dict = {"engine": self.engine}
        for name, xs, scale in (("ttft_ms", self.ttft_s, 1e3), ("tpot_ms", self.tpot_s, 1e3)):
            for q in (50, 95, 99):
                s[f"{name}_p{q}"] = scale * _pct(xs, q) if xs else None
        s.update({
            "e2e_s_p50": _pct(self.e2e_s, 50), "e2e_s_p99": _pct(self.e2e_s, 99),
            "output_tok_per_s": statistics.median(tps), "output_tok_per_s_min": min(tps), "output_tok_per_s_max": max(tps),
            "requests_per_s": statistics.median(r["requests_per_s"] for r in reps),
            "wall_s": statistics.median(r["wall_s"] for r in reps),
            "output_tokens": reps[0]["output_tokens"], "num_repetitions": len(reps),
        })
        # engine figures (KV, batch sizes, preemptions): the scheduler is deterministic, so the last repetition's
        totals = ("output_tokens", "wall_s", "output_tok_per_s", "requests_per_s")
        s.update({k: v for k, v in reps[-1].items() if k not in totals})
        s["repetitions"] = reps
        return s


def add_ratios(summaries: list[dict]) -> list[dict]:
    """Each engine's output tok/s over the first engine's, repetition by repetition (both ran in the same
    round, back to back): `ratios` lists them, `ratio`/`ratio_min`/`ratio_max` are their median and spread."""
    if not summaries:
        return summaries
    base = [r["output_tok_per_s"] for r in summaries[0].get("repetitions", [summaries[0]])]
    for s in summaries:
        mine = [r["output_tok_per_s"] for r in s.get("repetitions", [s])]
        ratios = [a / b for a, b in zip(mine, base, strict=False)]
        s.update(ratio_to=summaries[0]["engine"], ratios=ratios, ratio=statistics.median(ratios),
                 ratio_min=min(ratios), ratio_max=max(ratios))
    return summaries


def add_factors(summaries: list[dict], figures: dict[str, bool]) -> list[dict]:
    """How many times better each engine is than the first, figure by figure and round by round (both ran in
    the same round): for a figure where higher is better (`figures[key]` True) mine / first's, else first's /
    mine, so > 1 is better either way. `factors` holds the medians, `factors_per_round` every round's, `factor_to`
    the first engine; a figure either engine lacks (None, or 0 where it divides) gets None."""
    if not summaries:
        return summaries
    base = summaries[0]
    for s in summaries:
        per_round: dict[str, list[float] | None] = {}
        for key, higher in figures.items():
            pairs = list(zip(s["repetitions"], base["repetitions"], strict=False))
            qs = [(m[key] / b[key]) if higher else (b[key] / m[key]) for m, b in pairs
                  if m.get(key) and b.get(key)]
            per_round[key] = qs if len(qs) == len(pairs) else None
        s.update(factor_to=base["engine"], factors_per_round=per_round,
                 factors={k: statistics.median(v) if v else None for k, v in per_round.items()})
    return summaries
