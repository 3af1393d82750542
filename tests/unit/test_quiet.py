"""Known third-party noise is filtered by exact message; anything else still shows."""

from __future__ import annotations

import logging
import warnings

from llama3zh_dist.quiet import silence_known_noise


def test_the_deepspeed_deprecation_warnings_are_hidden_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        for _ in range(3):
            warnings.warn("`torch.distributed.reduce_scatter_tensor` is deprecated. Please use x", FutureWarning)
            warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use y", FutureWarning)
        warnings.warn("`torch.distributed.something_else` is deprecated", FutureWarning)
        warnings.warn("a different future change", FutureWarning)
    assert [str(w.message) for w in caught] == ["`torch.distributed.something_else` is deprecated",
                                                "a different future change"]


def test_the_scheduler_start_log_line_is_dropped_and_other_deepspeed_warnings_kept(caplog):
    silence_known_noise()
    silence_known_noise()  # idempotent
    log = logging.getLogger("DeepSpeed")
    assert sum(type(f).__name__ == "_DropMessages" for f in log.filters) == 1
    with caplog.at_level(logging.WARNING, logger="DeepSpeed"):
        log.propagate, old = True, log.propagate
        try:
            log.warning("Attempting to get learning rate from scheduler before it has started")
            log.warning("total_num_steps 1 is less than warmup_num_steps 2")
        finally:
            log.propagate = old
    # (once DeepSpeed is imported its logger has a handler of its own, so a kept line may be seen twice)
    seen = {r.getMessage() for r in caplog.records}
    assert seen == {"total_num_steps 1 is less than warmup_num_steps 2"}


class _Seen(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_rays_notices_are_dropped_and_its_token_auth_disabled_warning_kept():
    # Ray's own loggers do not propagate to the root: watch them with a handler of their own
    from ray._private.authentication import authentication_token_setup as setup  # the real emitters

    silence_known_noise()
    seen = _Seen()
    setup.logger.addHandler(seen)
    try:
        setup._warn_token_auth_enabled()
        setup._warn_token_auth_disabled()
    finally:
        setup.logger.removeHandler(seen)
    assert len(seen.messages) == 1 and seen.messages[0].startswith("Token authentication is disabled")
    progress = logging.getLogger("ray.data._internal.progress")
    seen = _Seen()
    progress.addHandler(seen)
    try:
        progress.warning("Progress bars disabled. To enable, set ...")
        progress.warning("another Ray Data warning")
    finally:
        progress.removeHandler(seen)
    assert seen.messages == ["another Ray Data warning"]
