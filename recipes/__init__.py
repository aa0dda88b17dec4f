"""Training and evaluation of the hybrids: the commands are the modules of this folder, the library under them
sits in subpackages.

Commands (``python -m recipes.X``): ``demo``, ``tiny_teacher``, ``importance``, ``distill_stage``, ``schedule``,
``sft``, ``merge``, ``evaluate``, ``lm_eval_cli`` (the ``apriel-h1-lm-eval`` script).

Library: ``training/`` (the distillation trainer and its loss, the stage config, data, speed and memory levers,
checkpoints), ``evaluation/`` (the lm-eval model, cache sizes), ``importance/`` (layer ranking; also a command),
``lm_eval_tasks/`` (the local lm-eval tasks).
"""
