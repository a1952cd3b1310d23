"""Recipe sections that need each other: one that would do nothing is refused, one that runs for nothing is warned about.

``embed:`` without ``hkmeans:`` ran nothing and printed "curate finished" (issue 28). ``check_sections`` runs where
a flow loads its recipe (flows/curate.py, augment.py, experiment.py) and in ``quarry run`` before any flow starts;
an experiment's variants may drop sections on purpose and are not checked.
"""

from __future__ import annotations

import logging
from typing import Any

from tasks import registry

log = logging.getLogger("quarry")

# section -> (sections it needs, what happens without them). Every one is an error: the user wrote the section to
# get its effect, and without the others the flows run nothing of it (flows/curate.py: embedding-space curation is
# embed -> hkmeans -> [semdedup] -> balance, Vo et al. 2024; quality_score scores with the trained classifier).
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "embed": (("hkmeans",), "the embeddings are computed only to be clustered, and nothing would run"),
    "hkmeans": (("embed",), "it clusters the embeddings, and nothing would run"),
    "semdedup": (("embed", "hkmeans", "balance"),
                 "its duplicate marks take effect only in balance's sample of the clusters, and would be ignored"),
    "balance": (("embed", "hkmeans"), "it samples the clusters, and nothing would run"),
    "quality_score": (("quality_classifier",), "it scores with the classifier that section trains"),
}
# section -> (sections whose absence leaves it running for nothing the output uses, what it still does): warnings,
# since the run still produces something the user may want (a classifier's accuracy, cluster views).
FEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "quality_classifier": (("quality_score",), "the classifier is trained and its accuracy printed, but no stage "
                           "scores documents with it"),
    "hkmeans": (("balance",), "embed and hkmeans run (their clusters can be queried), but the curated output is "
                "the kept documents: no balanced sample is drawn"),
    "heldout": (("evaluate",), "the held-out documents leave curation, but no evaluate section scores them"),
}


def check_sections(cfg: Any, path: Any, *, warn: bool = True) -> list[str]:
    """Raise RecipeError (naming the file and key) for a section that would do nothing without another; return the
    warnings (a section that runs but whose result no later stage uses), each also logged on the ``quarry`` logger
    when ``warn`` (the console and, inside a flow run, its Prefect log; the CLI's pre-check only refuses)."""
    from datasets_cfg import RecipeError

    present = {name for name in registry.sections() if getattr(cfg, name, None) is not None}
    for name, (needs, why) in NEEDS.items():
        missing = [n for n in needs if name in present and n not in present]
        if missing:
            raise RecipeError(f"{path}: `{name}` needs {' and '.join(f'`{m}`' for m in missing)}: "
                                           f"without it {why}; add it or remove `{name}`")
    warnings = []
    for name, (needs, what) in FEEDS.items():
        if name in present and not any(n in present for n in needs):
            warnings.append(f"{path}: `{name}` without {' or '.join(f'`{n}`' for n in needs)}: {what}")
    for w in warnings if warn else ():
        log.warning(w)
    return warnings
