"""llama3zh_dist: turn Llama 3 into a Chinese chat model by full-parameter SFT.

Entry points (each a Hydra app over ``conf/``):
    python -m llama3zh_dist          train (prep, train, export)
    python -m llama3zh_dist.prep     data preparation only
    python -m llama3zh_dist.export   consolidate a ZeRO-3 checkpoint into a HF folder
    python -m llama3zh_dist.chat     chat with an exported model
    python -m llama3zh_dist.sweep    Ray Tune sweep
"""

__version__ = "0.1.0"

# Exit code a rank (and the launcher) uses for "saved after a preemption signal, requeue me".
# 75 is EX_TEMPFAIL from sysexits.h: "try again later".
EXIT_REQUEUE = 75
