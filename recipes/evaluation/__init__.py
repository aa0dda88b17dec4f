"""What ``recipes.evaluate`` and ``apriel-h1-lm-eval`` share: the lm-eval model that decodes with the engine
(``lm_eval_model``) and the bytes of cache a model keeps per sequence (``decode_cache``)."""
