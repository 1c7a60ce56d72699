"""lm-eval's own command line with ``--model tokenseek-prefix`` available.

lm-eval finds models only in its registry and discovers no plugins, so the model must be
imported before lm-eval parses ``--model``. Use it exactly like ``lm_eval``::

    python -m tokenseek.eval.lm_eval_cli --model tokenseek-prefix --model_args pretrained=DIR \\
        --include_path tokenseek/eval/tasks --tasks tokenseek_arc_challenge
"""

import tokenseek.eval.prefix_lm  # noqa: F401  (registers tokenseek-prefix)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
