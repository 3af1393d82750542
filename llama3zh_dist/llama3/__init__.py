"""Llama 3 in one place, imported in one direction: :mod:`.tokens` (special tokens, ids, the
pre-tokenizer pattern, where the llama-models BPE file is) <- :mod:`.chat_format` (the Meta-exact chat
format: encoder, loss mask, Jinja template) <- :mod:`.hf_tokenizer` (the Hugging Face tokenizer class
and its loading). Of the rest of llama3zh_dist these import only ``errors`` and ``fileio``; importing
this package imports none of its modules (the Ray prep workers need only the first two, without
transformers)."""
