"""lm-evaluation-harness task configs over the LOCAL eval files (no hub access).

The YAMLs are generated at run time by ``write_task_configs`` because ``dataset_kwargs.data_files`` must hold the
absolute path of the local files; ``utils.py`` (the prompt functions) is copied beside them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

_MC = ["acc", "acc_norm"]  # acc_norm: length-normalised log-likelihood (lm-eval), used for ARC/HellaSwag/OBQA/PIQA

# name -> (file under the eval dir, spec). Names carry a quarry_ prefix so they never resolve to lm-eval's hub tasks.
SPECS: dict[str, dict] = {
    "arc_easy": {"file": "gauntlet/arc_easy.jsonl", "doc_to_text": "!function utils.qa_text", "metrics": _MC},
    "arc_challenge": {
        "file": "gauntlet/arc_challenge.jsonl",
        "doc_to_text": "!function utils.qa_text",
        "metrics": _MC,
    },
    "piqa": {"file": "gauntlet/piqa.jsonl", "doc_to_text": "!function utils.qa_text", "metrics": _MC},
    "boolq": {"file": "gauntlet/boolq.jsonl", "doc_to_text": "!function utils.qa_text", "metrics": ["acc"]},
    "openbookqa": {"file": "gauntlet/openbook_qa.jsonl", "doc_to_text": "{{query}}", "metrics": _MC},
    "copa": {"file": "gauntlet/copa.jsonl", "doc_to_text": "{{query}}", "metrics": ["acc"]},
    "winogrande": {
        "file": "gauntlet/winogrande.jsonl",
        "doc_to_text": "!function utils.winogrande_gold",
        "doc_to_choice": "context_options",
        "doc_to_target": "continuation",
        "metrics": ["acc"],
    },
    "hellaswag": {
        "file": "hellaswag/hellaswag.jsonl",
        "process_docs": "!function utils.hellaswag_docs",
        "doc_to_text": "{{query}}",
        "metrics": _MC,
    },
    "lambada": {"file": "gauntlet/lambada_openai.jsonl", "output_type": "loglikelihood"},
    "mmlu": {"dir": "mmlu"},  # a group of 57 subject tasks
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
            "output_type": spec.get("output_type", "multiple_choice"),
        }
        if "process_docs" in spec:
            cfg["process_docs"] = spec["process_docs"]
        if cfg["output_type"] == "loglikelihood":  # LAMBADA: predict the last word (Paperno et al. 2016)
            cfg |= {"doc_to_text": "{{context}}", "doc_to_target": "{{' ' + continuation}}"}
            cfg["metric_list"] = [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ]
        else:
            cfg["doc_to_text"] = spec["doc_to_text"]
            cfg["doc_to_choice"] = spec.get("doc_to_choice", "choices")
            cfg["doc_to_target"] = spec.get("doc_to_target", "gold")
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
            "doc_to_text": "!function utils.mmlu_text",
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "!function utils.mmlu_gold",
            "metric_list": _metric_list(["acc"]),
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
