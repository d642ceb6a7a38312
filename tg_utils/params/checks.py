"""Checks shared by the notebooks' parameter classes (tg_utils.params.notebooks): the corpus source, and
notebook 01's seeds (which seeds, which runs train with all of them)."""
from __future__ import annotations

from ..data.hub_data import HubData, HubDataError, is_hub_name
from .base import ParameterError


def corpus_check(p) -> None:
    """corpus: gensim-wiki, wikitext or text (these two with corpus_path), or a hub data set by name
    hf:<owner>/<name>[:<config>] (corpus_path optional: a local copy of its files)."""
    if is_hub_name(p.corpus):
        try:
            HubData.parse(p.corpus)
        except HubDataError as e:
            raise ParameterError(f"parameter 'corpus': {e}") from None
        return
    if p.corpus not in ("gensim-wiki", "wikitext", "text"):
        raise ParameterError(f"parameter 'corpus': unknown source {p.corpus!r}; use 'gensim-wiki', 'wikitext' "
                             "(with corpus_path), 'text' (with corpus_path) or a hub data set "
                             "hf:<owner>/<name>[:<config>] (e.g. hf:NeelNanda/pile-10k)")
    if p.corpus != "gensim-wiki" and not p.corpus_path:
        raise ParameterError(f"parameter 'corpus_path' is needed for corpus={p.corpus!r}")


def seeds_check(p, runs: list[str]) -> None:
    """seeds: a non-empty list of distinct integers >= 0 whose first is `seed` (its runs keep the plain
    folders <run> that later notebooks read); seed_runs: distinct names among `runs` (the runs trained)."""
    if not p.seeds:
        raise ParameterError(f"parameter 'seeds' must list at least one seed; use seeds: [{p.seed}] for one")
    dup = sorted({s for s in p.seeds if p.seeds.count(s) > 1})
    if dup:
        raise ParameterError(f"parameter 'seeds': seed {dup[0]} is given twice; list each seed once")
    if any(s < 0 for s in p.seeds):
        raise ParameterError(f"parameter 'seeds': seeds must be >= 0, got {p.seeds}")
    if p.seeds[0] != p.seed:
        raise ParameterError(f"parameter 'seeds': the first seed ({p.seeds[0]}) must be 'seed' ({p.seed}), the "
                             f"seed of the run folders later notebooks read; put {p.seed} first or set seed: "
                             f"{p.seeds[0]}")
    for run in p.seed_runs:
        if run not in runs:
            raise ParameterError(f"parameter 'seed_runs': {run!r} is not a run of these parameters; runs: "
                                 f"{', '.join(runs)}")
    if len(set(p.seed_runs)) != len(p.seed_runs):
        raise ParameterError("parameter 'seed_runs': a run is given twice; list each run once")
