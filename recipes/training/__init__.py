"""What the training commands share: the distillation trainer (``distillation``) and its chunked KD loss
(``kd_loss``, ``kd_loss_liger``), the stage config (``stage_config``) and the teacher/student pairing it checks
(``pairing``), the data (``data``, ``synthetic``, ``held_out``), what trains and how fast (``trainable``,
``random_init``, ``speed_levers``, ``zero3``) and complete checkpoints (``checkpoints``)."""
