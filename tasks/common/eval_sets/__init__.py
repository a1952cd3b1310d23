"""lm-evaluation-harness task configs over the LOCAL eval files (no hub access).

The YAMLs are generated at run time by ``write_task_configs`` because ``dataset_kwargs.data_files`` must hold the
absolute path of the local files; ``utils.py`` (the prompt functions) is copied beside them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

_MC = ["acc", "acc_norm"]  # acc_norm: length-normalised log-likelihood (lm-eval), used for ARC/HellaSwag/OBQA/PIQA

# What every generated task config states explicitly instead of inheriting lm-eval's defaults (Biderman et al. 2024,
# "Lessons from the trenches on reproducible evaluation", sec. 4: the prompt, the choice/target format and the
# metric's normalization are part of the score). lm-eval 0.4's own defaults are the same values.
PROMPT_FORMAT = {
    "target_delimiter": " ",  # between the context and each scored continuation
    "fewshot_delimiter": "\n\n",  # between few-shot examples
}
# The scores and how each normalizes the summed continuation log-likelihood (lm-eval's metric definitions).
NORMALIZATION = {
    "acc": "argmax of the summed log-likelihood of each choice (no normalization)",
    "acc_norm": "argmax of the summed log-likelihood divided by the choice's length in characters",
    "perplexity": "exp of minus the mean log-likelihood of the target per document",
}


def _mc(file: str, doc_to_text: str, metrics: list[str], *, doc_to_choice: str = "choices",
        doc_to_target: str = "gold", **extra) -> dict:
    """A multiple-choice task over a local file, every format key spelled out."""
    return {"file": file, "output_type": "multiple_choice", "doc_to_text": doc_to_text,
            "doc_to_choice": doc_to_choice, "doc_to_target": doc_to_target, **PROMPT_FORMAT,
            "metrics": metrics, **extra}  # fmt: skip


# name -> (file under the eval dir, spec). Names carry a quarry_ prefix so they never resolve to lm-eval's hub tasks.
SPECS: dict[str, dict] = {
    "arc_easy": _mc("gauntlet/arc_easy.jsonl", "!function utils.qa_text", _MC),
    "arc_challenge": _mc("gauntlet/arc_challenge.jsonl", "!function utils.qa_text", _MC),
    "piqa": _mc("gauntlet/piqa.jsonl", "!function utils.qa_text", _MC),
    "boolq": _mc("gauntlet/boolq.jsonl", "!function utils.qa_text", ["acc"]),
    "openbookqa": _mc("gauntlet/openbook_qa.jsonl", "{{query}}", _MC),
    "copa": _mc("gauntlet/copa.jsonl", "{{query}}", ["acc"]),
    "winogrande": _mc("gauntlet/winogrande.jsonl", "!function utils.winogrande_gold", ["acc"],
                      doc_to_choice="context_options", doc_to_target="continuation"),
    "hellaswag": _mc("hellaswag/hellaswag.jsonl", "{{query}}", _MC, process_docs="!function utils.hellaswag_docs"),
    # LAMBADA: predict the last word (Paperno et al. 2016)
    "lambada": {"file": "gauntlet/lambada_openai.jsonl", "output_type": "loglikelihood", "doc_to_text": "{{context}}",
                "doc_to_target": "{{' ' + continuation}}", **PROMPT_FORMAT, "metrics": ["perplexity", "acc"]},
    "mmlu": {"dir": "mmlu", "output_type": "multiple_choice", "doc_to_text": "!function utils.mmlu_text",
             "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "!function utils.mmlu_gold", **PROMPT_FORMAT,
             "metrics": ["acc"]},  # a group of 57 subject tasks
}
ALL_TASKS = tuple(SPECS)


def _yaml_value(v) -> str:
    if isinstance(v, str) and v.startswith("!function "):
        return v  # a YAML tag, must stay unquoted
    return json.dumps(v)  # JSON is valid YAML and quotes Jinja braces safely


def _write(path: Path, cfg: dict) -> None:
    lines = []
    for k, v in cfg.items():
        if isinstance(v, dict | list) and v and isinstance(v, list) and isinstance(v[0], dict):
            lines.append(f"{k}:")
            for item in v:
                lines.append("  - " + "\n    ".join(f"{ik}: {_yaml_value(iv)}" for ik, iv in item.items()))
        else:
            lines.append(f"{k}: {_yaml_value(v)}")
    path.write_text("\n".join(lines) + "\n")


def _metric_list(names: list[str]) -> list[dict]:
    return [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in names]


def write_task_configs(eval_dir: str | Path, out_dir: str | Path, tasks: tuple[str, ...] = ALL_TASKS) -> list[str]:
    """Write one YAML per requested task (+ utils.py) into out_dir; returns the lm-eval task names to run."""
    root = Path(eval_dir).resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("utils.py"), out / "utils.py")
    names = []
    for task in tasks:
        if task not in SPECS:
            raise KeyError(f"unknown eval task {task!r}; known: {list(SPECS)}")
        spec = SPECS[task]
        name = f"quarry_{task}"
        if task == "mmlu":
            names.append(_write_mmlu(root / spec["dir"], out, name))
            continue
        path = root / spec["file"]
        if not path.is_file():
            raise FileNotFoundError(f"eval file for {task!r} missing: {path}")
        cfg = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test",
            "output_type": spec["output_type"],
        }
        if "process_docs" in spec:
            cfg["process_docs"] = spec["process_docs"]
        cfg |= {k: spec[k] for k in ("doc_to_text", "doc_to_choice", "doc_to_target", *PROMPT_FORMAT) if k in spec}
        if cfg["output_type"] == "loglikelihood":
            cfg["metric_list"] = [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ]
        else:
            cfg["metric_list"] = _metric_list(spec["metrics"])
        cfg["metadata"] = {"version": 1.0}
        _write(out / f"{name}.yaml", cfg)
        names.append(name)
    return names


def _write_mmlu(mmlu_dir: Path, out: Path, group: str) -> str:
    tests = sorted((mmlu_dir / "test").glob("*_test.csv"))
    if not tests:
        raise FileNotFoundError(f"no MMLU test CSVs under {mmlu_dir / 'test'}")
    subtasks = []
    for test in tests:
        subject = test.name.removesuffix("_test.csv")
        files = {"test": str(test)}
        dev = mmlu_dir / "dev" / f"{subject}_dev.csv"
        if dev.is_file():
            files["dev"] = str(dev)
        cfg = {
            "task": f"{group}_{subject}",
            "dataset_path": "csv",
            # na_filter off: answers such as "None" or "NA" must stay strings, not NaN
            "dataset_kwargs": {"data_files": files, "na_filter": False},
            "test_split": "test",
            "output_type": "multiple_choice",
            "description": f"The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n",
            **{k: SPECS["mmlu"][k] for k in ("doc_to_text", "doc_to_choice", "doc_to_target", *PROMPT_FORMAT)},
            "metric_list": _metric_list(SPECS["mmlu"]["metrics"]),
            "metadata": {"version": 1.0},
        }
        if "dev" in files:
            cfg["fewshot_split"] = "dev"  # MMLU's 5-shot examples come from dev (Hendrycks et al. 2021)
        _write(out / f"{group}_{subject}.yaml", cfg)
        subtasks.append(f"{group}_{subject}")
    group_cfg = {
        "group": group,
        "task": subtasks,
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
        "metadata": {"version": 1.0},
    }
    _write(out / f"{group}.yaml", group_cfg)
    return group


# ---------------------------------------------------------------- provenance (Biderman et al. 2024, sec. 4)


def _sha256(chunks) -> str:
    import hashlib

    h = hashlib.sha256()
    for c in chunks:
        h.update(c if isinstance(c, bytes) else c.encode())
    return h.hexdigest()


def eval_file_hash(eval_dir: str | Path, task: str) -> str:
    """sha256 over the task's eval file(s) (MMLU: every test and dev CSV, by name): the data the score is on."""
    root = Path(eval_dir).resolve()
    spec = SPECS[task]
    files = sorted((root / spec["dir"]).rglob("*.csv")) if "dir" in spec else [root / spec["file"]]
    return _sha256(x for f in files for x in (f.relative_to(root).as_posix(), f.read_bytes()))


def task_config_hash(task_dir: str | Path, eval_dir: str | Path, task: str) -> str:
    """sha256 over the generated task YAML(s) and the prompt functions, with the machine's absolute eval-dir path
    replaced by a placeholder: the same config on another checkout hashes the same."""
    out, root = Path(task_dir), str(Path(eval_dir).resolve())
    names = sorted(out.glob(f"quarry_{task}_*.yaml")) if task == "mmlu" else []
    files = [out / f"quarry_{task}.yaml", *names, out / "utils.py"]
    return _sha256(x for f in files for x in (f.name, f.read_text().replace(root, "<eval_dir>")))
