"""Evaluation: CMMLU / C-Eval multiple choice scored like lm-evaluation-harness, chat samples with
automatic checks, on an export (``python -m llama3zh_dist.eval``) or on the ZeRO-3 engine during
training (``eval.every_steps``)."""
