"""The chat template is a contract: Meta's reference token for token, HF's apply_chat_template the
same ids, plain-text look-alikes, labels exactly on assistant content + <|eot_id|>."""

from __future__ import annotations

import random

import pytest

from llama3zh_dist.llama3.chat_format import encode_dialog, encode_for_training, get_encoder
from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer
from llama3zh_dist.llama3.tokens import BOS_ID, END_OF_TEXT_ID, EOT_ID, IGNORE_INDEX, PAD_ID, SPECIAL_TOKENS

N_CONVERSATIONS = 1200

_ZH = [
    "你好，请介绍一下你自己。",
    "为什么天空是蓝色的？",
    "请用三句话总结《红楼梦》。",
    "弱智吧：既然冰是水，那为什么不能用冰洗澡？",
    "小红书风格：今天去了一家超级好吃的火锅店🔥🔥",
    "繁體中文也要支持，例如「軟體」與「網路」。",
    "数学题：12 × 37 = ?",
    "把这句话翻译成英文：我喜欢学习机器学习。",
    "\u3000全角空格开头的段落。",
    "表情符号测试😀👍🏽👨‍👩‍👧‍👦🇨🇳",
]
_EN = [
    "Hello, how are you?",
    "Explain transformers in one paragraph.",
    "I'm fine, you're welcome; it's OK.",
    "What's 2+2?",
    "naïve café — “quotes” and ‘apostrophes’",
]
_CODE = [
    "```python\ndef fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n```",
    "```bash\nfor i in $(seq 1 10); do echo $i; done\n```",
    "    indented code\n\tand a tab\n",
    "SELECT * FROM users WHERE id = 42;",
    "<div class=\"x\">HTML &amp; entities</div>",
]
_LOOKALIKES = [
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|start_header_id|>assistant<|end_header_id|>",
    "<|end_of_text|>",
    "<|reserved_special_token_5|>",
    "<|python_tag|>",
    "<|eot_id",
    "<|",
    "|>",
]
_WS = ["", " ", "  ", "\n", "\n\n", "\t", " \n", "\r\n"]


def _text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 4)):
        pool = rng.choice([_ZH, _ZH, _EN, _CODE, _LOOKALIKES])
        parts.append(rng.choice(pool))
    sep = rng.choice(["", " ", "\n", "\n\n", "，"])
    s = sep.join(parts)
    if rng.random() < 0.15:
        s = rng.choice(_WS) + s
    if rng.random() < 0.15:
        s = s + rng.choice(_WS)
    if rng.random() < 0.03:
        s = "长" * rng.randint(100, 400)
    return s or "x"


def _conversation(rng: random.Random) -> list[dict]:
    msgs = []
    if rng.random() < 0.4:
        msgs.append({"role": "system", "content": _text(rng)})
    for _ in range(rng.randint(1, 4)):
        msgs.append({"role": "user", "content": _text(rng)})
        msgs.append({"role": "assistant", "content": _text(rng)})
    return msgs


@pytest.fixture(scope="module")
def conversations():
    rng = random.Random(1234)
    return [_conversation(rng) for _ in range(N_CONVERSATIONS)]


@pytest.fixture(scope="module")
def meta_chat_format():
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    return ChatFormat(Tokenizer.get_instance())


@pytest.fixture(scope="module")
def hf_tokenizer():
    return load_tokenizer(None)


def _meta_tokens(cf, msgs):
    from llama_models.datatypes import RawMessage

    return cf.encode_dialog_prompt([RawMessage(role=m["role"], content=m["content"]) for m in msgs]).tokens


def _strip_content(msgs):
    return [{"role": m["role"], "content": m["content"].strip()} for m in msgs]


def test_template_matches_meta_reference_token_for_token(conversations, meta_chat_format):
    enc = get_encoder()
    header = enc.header_ids("assistant")
    n_lookalike = 0
    for msgs in conversations:
        # SPEC: Meta's reference on the stripped contents (what Meta's llama3 reference itself does)
        ref = _meta_tokens(meta_chat_format, _strip_content(msgs))
        # Meta appends the assistant header for generation; training is the reference without it
        assert ref[-len(header) :] == header
        assert encode_dialog(None, msgs, add_generation_prompt=True) == ref
        assert encode_dialog(None, msgs) == ref[: -len(header)]
        ids, labels = encode_for_training(msgs)
        assert ids == ref[: -len(header)]
        n_lookalike += any("<|" in m["content"] for m in msgs)
    assert n_lookalike > 100  # the generator did exercise special-token look-alikes
    # very long content goes through Meta's 25k-char splitting identically
    long_msgs = [{"role": "user", "content": "好" * 30000 + " " * 26000 + "end"}, {"role": "assistant", "content": "ok"}]
    assert encode_dialog(None, long_msgs, add_generation_prompt=True) == _meta_tokens(meta_chat_format, long_msgs)
    edge = [{"role": "user", "content": " \n 你好\t"}, {"role": "assistant", "content": "\n\n好的 "}]
    assert encode_dialog(None, edge) == encode_dialog(None, _strip_content(edge))


def test_hf_apply_chat_template_gives_the_same_tokens(conversations, hf_tokenizer):
    for msgs in conversations[:400]:
        for gen in (False, True):
            ours = encode_dialog(hf_tokenizer, msgs, add_generation_prompt=gen)
            hf = hf_tokenizer.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True, return_dict=False)
            assert hf == ours


def test_hf_template_string_tokenized_by_stock_hf_matches_for_pipeline_text(conversations, hf_tokenizer):
    """Stock HF (render to a string, tokenise it) equals our ids for what training contains: stripped
    turns, with look-alikes kept as text via sanitize_control_tokens. This is what a plain
    AutoTokenizer of an exported folder does; see llama3/hf_tokenizer.py for the two documented caveats."""
    from transformers import PreTrainedTokenizerFast

    checked = 0
    for msgs in conversations:
        msgs = _strip_content(msgs)
        if any(not m["content"] for m in msgs):
            continue
        text = hf_tokenizer.apply_chat_template(msgs, tokenize=False)
        assert text == hf_tokenizer.decode(encode_dialog(None, msgs))
        if any("<|" in m["content"] for m in msgs):
            continue  # stock sanitize splits text around look-alikes (documented); ours does not
        stock = PreTrainedTokenizerFast.apply_chat_template(hf_tokenizer, msgs, tokenize=True, return_dict=False)
        assert stock == encode_dialog(None, msgs)
        checked += 1
    assert checked > 100


def test_special_token_lookalikes_in_text_stay_plain_text(hf_tokenizer):
    msgs = [
        {"role": "user", "content": "hi <|eot_id|> there <|begin_of_text|>"},
        {"role": "assistant", "content": "<|start_header_id|>system<|end_header_id|>"},
    ]
    for ids in (
        encode_dialog(None, msgs),
        hf_tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False),
    ):
        special = set(range(128000, 128256))
        # only the template's own specials: BOS, 2 x (start, end, eot)
        assert [t for t in ids if t in special] == [BOS_ID, 128006, 128007, EOT_ID, 128006, 128007, EOT_ID]
        assert "<|eot_id|>" in hf_tokenizer.decode(ids[1:-1])


def test_labels_cover_exactly_assistant_content_and_eot(conversations):
    enc = get_encoder()
    for msgs in conversations[:300]:
        for train_on in ("all_assistant", "last_assistant"):
            ids, labels = encode_for_training(msgs, train_on)
            assert len(ids) == len(labels)
            # expected: build the supervised ids turn by turn
            expected = []
            n_asst = sum(m["role"] == "assistant" for m in msgs)
            k = 0
            for m in msgs:
                if m["role"] == "assistant":
                    k += 1
                    if train_on == "all_assistant" or k == n_asst:
                        expected += enc.encode_text(m["content"].strip()) + [EOT_ID]
            assert [t for t in labels if t != IGNORE_INDEX] == expected
            # supervised labels equal the input ids at the same positions (shifted by the loss, not here)
            assert all(l == i for l, i in zip(labels, ids) if l != IGNORE_INDEX)
            assert labels[-1] == EOT_ID


def test_hf_assistant_mask_equals_training_labels(conversations, hf_tokenizer):
    for msgs in conversations[:50]:
        out = hf_tokenizer.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
        _, labels = encode_for_training(msgs)
        assert out["assistant_masks"] == [int(l != IGNORE_INDEX) for l in labels]


def test_tokenizer_has_llama3_special_tokens_bos_pad_and_template(hf_tokenizer):
    assert len(hf_tokenizer) == 128256
    assert hf_tokenizer.bos_token == "<|begin_of_text|>" and hf_tokenizer.bos_token_id == BOS_ID == 128000
    assert hf_tokenizer.pad_token == "<|finetune_right_pad_id|>" and hf_tokenizer.pad_token_id == PAD_ID
    assert hf_tokenizer.convert_tokens_to_ids("<|eot_id|>") == EOT_ID == 128009
    assert hf_tokenizer.convert_tokens_to_ids("<|end_of_text|>") == END_OF_TEXT_ID == 128001
    vocab = hf_tokenizer.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(128000, 128256))
    gen = hf_tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True, tokenize=False)
    assert gen.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_saved_tokenizer_loads_with_stock_autotokenizer(tmp_path, hf_tokenizer):
    from transformers import AutoTokenizer

    hf_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    msgs = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    assert tok.chat_template == hf_tokenizer.chat_template
    assert tok.pad_token_id == PAD_ID
    assert tok.apply_chat_template(msgs, tokenize=True, return_dict=False) == encode_dialog(None, msgs)
    # our encoder also works from the reloaded stock tokenizer (same BPE)
    assert encode_dialog(tok, msgs, add_generation_prompt=True) == encode_dialog(None, msgs, add_generation_prompt=True)
    # and load_tokenizer(<model folder>) gives our tokenizer again: template, pad, plain-text look-alikes
    again = load_tokenizer(str(tmp_path))
    tricky = msgs[:2] + [{"role": "assistant", "content": "typed <|eot_id|> here"}]
    assert again.apply_chat_template(tricky, tokenize=True, return_dict=False) == encode_dialog(None, tricky)
    assert again.pad_token_id == PAD_ID and again.chat_template == hf_tokenizer.chat_template


def test_load_tokenizer_rejects_a_non_llama3_tokenizer_and_unreachable_hub_ids(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models

    from llama3zh_dist.errors import UserError
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="not a Llama 3 tokenizer"):
        load_tokenizer(str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UserError, match="model.path='nobody/no-such-model'.*unreachable"):
        load_tokenizer("nobody/no-such-model")


def test_encode_for_training_rejects_malformed_conversations():
    with pytest.raises(ValueError):
        encode_for_training([{"role": "user", "content": "only a question"}])
    with pytest.raises(ValueError):
        encode_for_training([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}])
    with pytest.raises(ValueError):
        encode_for_training([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], train_on="bogus")
