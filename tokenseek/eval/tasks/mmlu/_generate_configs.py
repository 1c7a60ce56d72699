"""Write one YAML per MMLU subject (run from this folder: ``python _generate_configs.py``).

The subject list is fixed (cais/mmlu's 57 subjects) so the task list does not
depend on which data files a user has; a missing file is reported at run time.
"""

from pathlib import Path

SUBJECTS = [
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
]

SUBJECT_YAML = """include: _template_yaml
task: tokenseek_mmlu_{subject}
task_alias: {subject}
tag: tokenseek_mmlu_tasks
dataset_kwargs:
  subject: {subject}
description: "The following are multiple choice questions (with answers) about {words}.\\n\\n"
"""

GROUP_YAML = """# Real MMLU (57 subjects, 5-shot from each subject's dev split), micro-averaged
# over all scored questions like lm-eval's mmlu group. Not the paper's "MMLU"
# column, which is ETHICS (see tokenseek_ethics).
group: tokenseek_mmlu
group_alias: mmlu
task:
  - tokenseek_mmlu_tasks
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
metadata:
  version: 1.0
"""


def main() -> None:
    here = Path(__file__).parent
    for subject in SUBJECTS:
        text = SUBJECT_YAML.format(subject=subject, words=subject.replace("_", " "))
        (here / f"tokenseek_mmlu_{subject}.yaml").write_text(text)
    (here / "tokenseek_mmlu.yaml").write_text(GROUP_YAML)


if __name__ == "__main__":
    main()
