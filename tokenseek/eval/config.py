"""What ``tokenseek eval`` / :func:`tokenseek.eval.job.run_eval` evaluates, and how.

The fields made with ``option`` are the command's own flags; the plain fields are the model,
precision and example-building settings it shares with ``tokenseek train`` (the CLI fills
them from TrainConfig's flags, so they mean the same thing in both commands).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenseek.data.templates import DEFAULT_TEMPLATE
from tokenseek.data.tokenize import DEFAULT_MAX_LENGTH
from tokenseek.eval.catalog import DATA_ENV, DEFAULT_TASKS
from tokenseek.utils.options import check_options, ignored, option


@dataclass
class EvalConfig:
    adapter: str | None = option(None, "PEFT adapter folder (or training output folder) to put on --model")
    quantize: str | None = option(None, "load the base model in 4-bit NF4 (automatic for a QLoRA run's adapter)", choices=("nf4",))
    tasks: str | None = option(
        None, "comma-separated tasks; 'paper' = the five paper tasks", shown=f"{','.join(DEFAULT_TASKS)}, or none with --heldout"
    )
    limit: int | None = option(None, "at most N items per task (groups split N over subtasks) / N held-out records", minimum=1)
    num_fewshot: str | None = option(None, "shots for all tasks that are not 0-shot by design (e.g. 5), or per task: arc_challenge=0,mmlu=5")
    data_dir: str | None = option(None, "folder with the benchmark files", shown=f"${DATA_ENV}, else ../shared/data/eval")
    include_path: list | None = option(None, "extra folder of lm-eval task YAMLs (repeatable)")
    hub: bool = option(False, "use lm-eval's own (Hub) tasks for the paper names instead of the local files")
    batch_size: int = option(8, "sequences per forward pass", minimum=1)
    lm_eval_model: str = option(
        "tokenseek-prefix",
        "tokenseek-prefix: each shared few-shot context runs once (same log-likelihoods as hf); hf: lm-eval's plain HFLM",
        choices=("tokenseek-prefix", "hf"),
    )
    output: str | None = option(None, "write results JSON here (and the tables as .md next to it)")
    heldout: str | None = option(None, "held-out data (.json/.jsonl/.csv/.parquet, e.g. a run's heldout.json): report response-token loss")
    exact_match: bool = option(
        False, "with --heldout (Alpaca records): also answer each prompt greedily and report the share whose first answer line equals its output"
    )
    max_new_tokens: int = option(40, "with --exact-match: tokens generated per answer at most", minimum=1)

    model: str | None = None  # Hub id, model folder or .gguf; None: the default model
    dtype: str = "auto"  # as --dtype: bf16 on a GPU that supports it, else fp32
    fields: str | None = None  # column mapping of the --heldout records
    template: str = DEFAULT_TEMPLATE
    max_length: int = DEFAULT_MAX_LENGTH

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def benchmark_tasks(self) -> str | None:
        """The tasks to run ("" none, None the paper's): without ``--tasks`` the paper's, unless ``--heldout``
        says the job is a held-out one."""
        return self.tasks if self.tasks is not None or not self.heldout else ""

    def ignored_options(self) -> list[str]:
        """One line for each option set away from its default that this evaluation never reads."""
        why = {}
        if not self.exact_match:
            why["max_new_tokens"] = "it is the answer length of --exact-match"
        if self.benchmark_tasks == "":
            why.update(dict.fromkeys(("num_fewshot", "include_path", "hub", "data_dir", "lm_eval_model"), "no benchmark runs (give --tasks)"))
        if not self.heldout:
            why.update(dict.fromkeys(("fields", "template", "max_length"), "it builds the --heldout examples, and none are given"))
        return ignored(self, why)
