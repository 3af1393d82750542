"""Cleaning steps do what they say (each is switchable in data.clean and counted by prep)."""

from __future__ import annotations

from llama3zh_dist.data.clean import (
    IdentityRewriter,
    RefusalFilter,
    dedup_text,
    exact_key,
    jaccard_estimate,
    minhash_signature,
    near_duplicates,
    normalize_whitespace,
    to_simplified,
)


def test_whitespace_cleaning_drops_controls_and_normalises_line_breaks():
    s = "\ufeff 你好\u200b世界\x07 \r\n\r\n\r\n\r\n第二段  \n\x00"
    assert normalize_whitespace(s) == "你好世界\n\n第二段"
    assert normalize_whitespace("代码:\n    缩进保留\n") == "代码:\n    缩进保留"


def test_traditional_chinese_becomes_simplified():
    assert to_simplified("這是一個軟體測試，請問網路在哪裡？") == "这是一个软体测试，请问网路在哪里？"
    plain = "这是简体中文和 English。"
    assert to_simplified(plain) is plain  # fast path: nothing traditional, untouched


def test_identity_rewriting_targets_self_identification_only():
    rw = IdentityRewriter("小智", "示例实验室")
    assert rw("我是ChatGPT，由OpenAI开发的语言模型。") == "我是小智，由示例实验室开发的语言模型。"
    assert rw("I am ChatGPT, developed by OpenAI.") == "I am 小智, developed by 示例实验室."
    news = "OpenAI 在 2023 年发布了 GPT-4 技术报告。"
    assert rw(news) == news


def test_refusal_filter_matches_configured_phrases_case_insensitively():
    f = RefusalFilter(["作为一个AI语言模型", "As an AI language model"])
    assert f.match("抱歉，作为一个AI语言模型，我不能") == "作为一个ai语言模型"
    assert f.match("as an ai language model, i can't") is not None
    assert f.match("好的，这是答案。") is None


def test_exact_dedup_key_ignores_case_whitespace_and_width():
    a = [{"role": "user", "content": "Hello  World"}, {"role": "assistant", "content": "你好！"}]
    b = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "你好!"}]
    c = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "再见"}]
    assert exact_key(dedup_text(a)) == exact_key(dedup_text(b))
    assert exact_key(dedup_text(a)) != exact_key(dedup_text(c))


def test_minhash_finds_near_duplicates_and_keeps_the_first():
    base = "春天来了，公园里的花都开了。我们一家人周末去野餐，带了水果、三明治和一壶热茶。孩子们在草地上放风筝，笑声不断。" * 2
    near = base.replace("热茶", "绿茶")
    other = "量子计算利用量子比特的叠加与纠缠进行并行计算，在因数分解和模拟化学反应方面有潜在优势。" * 2
    sigs = [minhash_signature(t, 128, 5) for t in (base, near, other)]
    assert jaccard_estimate(sigs[0], sigs[1]) > 0.75
    assert jaccard_estimate(sigs[0], sigs[2]) < 0.2
    dup = near_duplicates([0, 1, 2], sigs, threshold=0.7, num_perm=128)
    assert dup == {1: 0}


def test_near_dedup_search_holds_at_most_96_bytes_per_row_beside_the_band_hashes():
    """Issue 20 item 1: the driver's per-row cost of near-dedup is what data/prep.py states: the band
    hashes (8 bytes x bands; 4 bands, 32 bytes, at the default threshold 0.85 and num_perm 64) plus
    at most 12 int64s per row while searching (measured: ~88 bytes), whatever the row count; the
    signatures stay on disk. numpy's allocations are traced by tracemalloc."""
    import tracemalloc

    import numpy as np

    from llama3zh_dist.data.clean import lsh_params, near_duplicates_banded

    assert lsh_params(0.85, 64)[0] == 4
    for n in (50_000, 200_000):
        rng = np.random.default_rng(0)
        bands = rng.integers(0, 2**63, size=(n, 4), dtype=np.uint64)
        bands[::10] = bands[1::10]  # every tenth row a candidate in every band
        calls = []
        tracemalloc.start()
        try:
            near_duplicates_banded(bands, lambda a, b: calls.append(len(a)) or np.zeros(len(a)), 0.85)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert sum(calls) > 0  # candidates were verified, not skipped
        assert peak / n <= 96, f"{n} rows: {peak / n:.0f} bytes per row beside the band hashes"
