"""``lm_eval`` with this package's model and tasks known: ``apriel-h1-lm-eval`` (or ``python -m recipes.lm_eval_cli``).

Same arguments as ``lm_eval``; what it adds:

* ``--model apriel_h1`` (``recipes.evaluation.lm_eval_model``): lm-eval 0.4.x finds models only in its own table and has
  no entry-point plugins, so a wrapper that imports our model module before lm-eval's CLI runs is how an
  installed package adds one;
* the local tasks (``apriel_h1_synthetic``, ``apriel_h1_choices``; ``recipes/lm_eval_tasks/``) as the
  ``--include_path`` when none is given.

    apriel-h1-lm-eval --model apriel_h1 --model_args pretrained=DIR --tasks apriel_h1_synthetic --apply_chat_template
"""

from __future__ import annotations

import sys

from cli import command_line
from recipes.lm_eval_tasks import TASKS_DIR, require_lm_eval

INSTALL_HINT = 'apriel-h1-lm-eval needs lm-eval: pip install -e ".[eval]" (or pip install "lm-eval>=0.4.13,<0.5")'


@command_line
def main() -> None:
    require_lm_eval(INSTALL_HINT)
    from lm_eval.__main__ import cli_evaluate

    import recipes.evaluation.lm_eval_model  # noqa: F401  (registers --model apriel_h1)

    if len(sys.argv) > 1 and not any(arg.split("=")[0] == "--include_path" for arg in sys.argv):
        sys.argv += ["--include_path", str(TASKS_DIR)]
    cli_evaluate()


if __name__ == "__main__":
    sys.exit(main())
