"""``data``: sources, cleaning, tokenisation limits, packing and the prepared-data location."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .base import one_of, require

FORMATS = ("sharegpt", "alpaca", "zhihu", "firefly", "messages", "columns")


@dataclass
class NearDedupConfig:
    enabled: bool = True
    """Drop near-duplicates (MinHash LSH over character n-grams); the first one stays."""
    threshold: float = 0.85
    """Estimated Jaccard similarity at or above which two conversations are duplicates."""
    num_perm: int = 64
    """MinHash permutations (64: Jaccard estimate within ~0.05 at 0.85)."""
    ngram: int = 5
    """Character n-gram length."""

    def __post_init__(self):
        require(0 < self.threshold <= 1, "threshold", self.threshold, "a Jaccard similarity is in (0, 1]")
        require(self.num_perm >= 16, "num_perm", self.num_perm, "fewer than 16 permutations estimate similarity too roughly")
        require(self.ngram >= 1, "ngram", self.ngram, "n-grams have at least one character")


@dataclass
class IdentityConfig:
    enabled: bool = True
    """Rewrite other assistants' self-identification in assistant text ("我是ChatGPT")."""
    name: str = "Llama3-中文助手"
    """The model's name used by the rewrite (and checked by the chat evaluation)."""
    owner: str = "llama3zh_dist"
    """Who made it ("由OpenAI开发" -> "由<owner>开发")."""
    rules: Optional[List[Any]] = None
    """null = built-in rules; or a list of [regex, replacement] with {name}/{owner}."""


@dataclass
class RefusalConfig:
    enabled: bool = True
    """Drop conversations whose assistant text contains one of the phrases."""
    phrases: List[str] = field(default_factory=list)
    """Case-insensitive substrings."""


@dataclass
class CleanConfig:
    whitespace: bool = True
    traditional_to_simplified: bool = True
    exact_dedup: bool = True
    near_dedup: NearDedupConfig = field(default_factory=NearDedupConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    refusal: RefusalConfig = field(default_factory=RefusalConfig)


@dataclass
class RepairConfig:
    """Unambiguous fixes made before a row is judged; each counted (data_report.json, repairs.jsonl)."""

    role_aliases: bool = True
    """bing/chatgpt/bard/chatbot/... -> assistant, user -> user (names not the format's own)."""
    banner_system: bool = True
    """Drop system turns that carry a share-site banner (banner_phrases)."""
    leading_assistant: bool = True
    """Drop assistant turns before the first user turn (a continuation chunk)."""
    merge_consecutive: bool = True
    """Join consecutive turns of one role (blank line between)."""
    empty_pairs: bool = True
    """Remove user/assistant pairs with an empty side (and empty system turns)."""
    trailing_user: bool = True
    """Drop a final user turn that has no answer."""
    banner_phrases: List[str] = field(default_factory=list)
    """Case-insensitive substrings of a banner system turn."""


@dataclass
class RayDataConfig:
    workers: Optional[int] = None
    """Ray Data parallelism (null = all CPUs of this machine, 0 = no Ray)."""
    min_rows: int = 20000
    """Below this many rows, process in-process (Ray start-up costs more than it saves)."""
    block_rows: int = 2000
    address: Optional[str] = None
    """An existing Ray cluster (e.g. auto); null = start a local one for this prep."""

    def __post_init__(self):
        require(self.workers is None or self.workers >= 0, "workers", self.workers, "null, 0 (no Ray) or a count")
        require(self.block_rows >= 1, "block_rows", self.block_rows, "a block holds at least one row")


@dataclass
class DataConfig:
    name: str = "data"
    """Names the dataset (and its default out_dir)."""
    out_dir: str = "prepared/${data.name}"
    """Where the prepared dataset is written / read."""
    sources: Dict[str, Any] = field(default_factory=dict)
    """Source name -> {format, files | hub, weight, ...} (see conf/data/sample.yaml)."""
    format: Optional[str] = None
    """data=files only: the format of data.files."""
    files: Optional[List[str]] = None
    """data=files only: files or globs."""
    columns: Optional[Dict[str, Any]] = None
    """data=files with format=columns: {user, assistant, system, id} column names."""
    prompt_template: Optional[str] = None
    """format=columns: builds the user turn from the row's fields, e.g. "标题：{title}"."""
    max_seq_len: int = 2048
    """Tokens per training row (and the limit for one sample)."""
    packing: bool = True
    """Best-fit-decreasing packing of samples into rows; false: one sample per row."""
    max_reject_fraction: float = 0.05
    """Prep fails above this share of rows that fail validation (filters do not count)."""
    val_fraction: float = 0.0
    """Share of each source's kept samples held out as val/."""
    train_on: str = "all_assistant"
    """Loss on every assistant turn (all_assistant) or only the last one (last_assistant)."""
    overlong: str = "truncate"
    """Samples over max_seq_len: truncate at a turn boundary, or drop."""
    shard_rows: int = 4096
    rejects_raw_max_chars: int = 4096
    progress: bool = True
    clean: CleanConfig = field(default_factory=CleanConfig)
    repair: RepairConfig = field(default_factory=RepairConfig)
    ray: RayDataConfig = field(default_factory=RayDataConfig)

    def __post_init__(self):
        require(self.max_seq_len >= 16, "max_seq_len", self.max_seq_len,
                "a row must hold at least a chat header, a turn and <|eot_id|> (16 tokens)")
        require(0 <= self.max_reject_fraction <= 1, "max_reject_fraction", self.max_reject_fraction, "a share, in [0, 1]")
        require(0 <= self.val_fraction < 1, "val_fraction", self.val_fraction,
                "a share in [0, 1): some samples must be left to train on")
        one_of("train_on", self.train_on, ("all_assistant", "last_assistant"))
        one_of("overlong", self.overlong, ("truncate", "drop"))
        require(self.shard_rows >= 1, "shard_rows", self.shard_rows, "a shard holds at least one row")
        if not self.sources:
            missing = [k for k in ("files", "format") if not getattr(self, k)]
            require(not missing, "files" if "files" in missing else "format", None,
                    "a dataset without data.sources (data=files) needs data.files and data.format: set them, "
                    "e.g. data=files data.files=[a.jsonl] data.format=sharegpt")
        require(self.format is None or self.format in FORMATS, "format", self.format, f"use one of {', '.join(FORMATS)}")
