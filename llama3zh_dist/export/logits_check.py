"""Is the exported model the trained one? Its logits on the reference prompts against the trained
model's, judged with a tolerance that a correct export meets whatever produced the reference.

The reference comes from the training ranks (after a GPU run: bf16 weights, FlashAttention-2,
cuBLAS); the check recomputes on the CPU in the export dtype. Two correct bf16 computations of a
32-80 layer model differ by rounding that grows with depth, and over a 128k vocabulary x every
position a few logits sit far out in that noise's tail: one max-difference bound tight enough to
catch a wrong tensor fails correct exports, and one loose enough for correct exports misses wrong
tensors. Three criteria, each with its reason, must all hold:

- argmax agreement at the decisive positions, those where the reference's top token leads the
  second by more than twice the typical rounding difference (mean limit x mean |logit|): only
  near-ties may flip under rounding; a wrong tensor changes the prediction at most positions.
- mean |difference| relative to the mean |reference logit|: rounding noise averages out to a
  small share of the logits' size; a wrong tensor moves all logits by a share of their own size.
- max |difference| relative to the largest |reference logit|: a loose bound on the tail that
  still catches one position or one vocabulary row being grossly wrong.
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

REFERENCE_FILE = "reference_logits.safetensors"
# Written into every export folder: what was checked, and why the logits were not when they were not.
VERIFICATION_FILE = "verification.json"

# Limits by the less precise of the dtype the reference was computed in and the export dtype.
LIMITS = {
    # fp32 on both sides: the same math, only summation order differs (CPU quickstart, tests).
    torch.float32: {"argmax_agreement": 0.98, "mean_rel_diff": 1e-5, "max_rel_diff": 1e-4},
    # fp16: 11 mantissa bits, ~8x less rounding than bf16.
    torch.float16: {"argmax_agreement": 0.95, "mean_rel_diff": 1e-2, "max_rel_diff": 4e-2},
    # bf16: 8 mantissa bits (2^-9 relative per rounding) accumulated over up to 80 layers, plus
    # FlashAttention vs SDPA and GPU vs CPU matmul orders, on both sides: a few percent of the
    # mean |logit| on average (a 6-layer model here: 1.9%; depth grows it roughly as its square
    # root). A wrong tensor gives mean differences of the order of the logits themselves
    # (relative 0.3-1), far above 6%.
    torch.bfloat16: {"argmax_agreement": 0.90, "mean_rel_diff": 6e-2, "max_rel_diff": 1.5e-1},
}
_PRECISION_ORDER = [torch.float32, torch.float16, torch.bfloat16]


def governing_dtype(*dtypes: torch.dtype | None) -> torch.dtype:
    """The least precise of the given dtypes (the one whose rounding dominates the difference)."""
    known = [d for d in dtypes if d in LIMITS]
    return max(known, key=_PRECISION_ORDER.index) if known else torch.float32


def judge_logits(got: list[torch.Tensor], want: list[torch.Tensor], dtype: torch.dtype) -> dict:
    """``got``/``want``: per prompt [n_positions, vocab] logits. Returns the figures, the limits and
    ``failures`` (one line per criterion that does not hold; empty when the export is accepted)."""
    limits = LIMITS[dtype]
    diffs = torch.cat([(g.float() - w.float()).abs().reshape(-1) for g, w in zip(got, want)])
    ref_abs = torch.cat([w.float().abs().reshape(-1) for w in want])
    mean_ref = max(float(ref_abs.mean()), 1e-6)
    max_ref = max(float(ref_abs.max()), 1.0)
    want_all = torch.cat([w.float() for w in want])
    got_top = torch.cat([g.float().argmax(-1) for g in got])
    top2 = want_all.topk(2, dim=-1).values if want_all.shape[-1] > 1 else want_all.repeat(1, 2)
    decisive = (top2[:, 0] - top2[:, 1]) > 2 * limits["mean_rel_diff"] * mean_ref
    agree = int((got_top == want_all.argmax(-1))[decisive].sum())
    n_decisive = int(decisive.sum())
    figures = {
        "argmax_agreement": agree / n_decisive if n_decisive else None,
        "mean_rel_diff": float(diffs.mean()) / mean_ref,
        "max_rel_diff": float(diffs.max()) / max_ref,
    }
    failures = []
    if n_decisive and not figures["argmax_agreement"] >= limits["argmax_agreement"]:
        failures.append(f"top token agrees at {figures['argmax_agreement']:.1%} of the {n_decisive} decisive "
                        f"positions (needs >= {limits['argmax_agreement']:.0%})")
    for key, what in (("mean_rel_diff", "mean"), ("max_rel_diff", "max")):
        if not figures[key] <= limits[key]:
            failures.append(f"{what} |difference| is {figures[key]:.3g} of the {what} |reference logit| "
                            f"(limit {limits[key]:.3g})")
    return {**figures, "max_abs_diff": float(diffs.max()), "mean_abs_diff": float(diffs.mean()),
            "max_abs_reference": max_ref, "mean_abs_reference": mean_ref, "positions": int(want_all.shape[0]),
            "decisive_positions": n_decisive,
            "limits": dict(limits), "judged_as": str(dtype).replace("torch.", ""), "failures": failures}


def logits_unverified_reason(ckpt_dir: pathlib.Path, verify) -> str | None:
    """Why the logits of an export from ``ckpt_dir`` are not checked, or None when they are.

    Training saves the reference logits with every checkpoint (train.py ``save_checkpoint``); a
    checkpoint without them was made by an older version or had the file removed."""
    if not verify:
        return "export.verify=false: the export was not verified"
    if not (pathlib.Path(ckpt_dir) / REFERENCE_FILE).is_file():
        return (f"{pathlib.Path(ckpt_dir).name} has no {REFERENCE_FILE} (made by an older version?): the logits "
                "of the export were not compared with the trained model's")
    return None


def record_verification(folder: pathlib.Path, verification: dict, ckpt_dir: pathlib.Path, verify) -> pathlib.Path:
    """Write ``verification.json`` into the export ``folder``; an export whose logits could not be
    checked says so there (``logits_verified: false`` and the reason) and on stderr, never silently."""
    reason = logits_unverified_reason(ckpt_dir, verify) if "logits" not in verification else None
    record = {"checkpoint": str(ckpt_dir), "logits_verified": reason is None, **verification}
    if reason:
        record["not_verified"] = reason
        print(f"WARNING: export not verified: {reason}", file=sys.stderr, flush=True)
    path = pathlib.Path(folder) / VERIFICATION_FILE
    path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return path
