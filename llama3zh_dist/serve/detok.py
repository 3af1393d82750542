"""Token ids to text, incrementally, never splitting a character; stop strings held back until decided.

A Chinese character is 3 UTF-8 bytes and Llama 3's byte-level BPE often spreads one over two or
three tokens: decoding a prefix of the ids then ends in U+FFFD. As vLLM's detokenizer and
transformers' TextStreamer do, the text of the newest tokens is only released once it no longer ends
in a replacement character (a prefix/read offset window keeps each decode short). Stop strings
(OpenAI ``stop``): text that could still grow into one is held back; when one appears the answer
ends just before it.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed ids with :meth:`add`; each call returns the new text that is safe to show (maybe "")."""

    def __init__(self, tokenizer, stop: list[str] | None = None, skip_ids: set[int] | None = None):
        self.tok = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.skip_ids = skip_ids or set()
        self.ids: list[int] = []
        self.prefix_offset = 0  # ids[prefix_offset:read_offset] decode to text already released
        self.read_offset = 0
        self.text = ""          # all text decoded so far (released or held for stop strings)
        self.released = 0       # characters of self.text given out
        self.stopped = False    # a stop string matched: the answer is complete

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        if self.stopped or token_id in self.skip_ids:
            return ""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if full.endswith(REPLACEMENT) or len(full) <= len(prefix):
            return ""  # an incomplete character: wait for the next token
        self.text += full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text once generation ended (an unfinished character shows as U+FFFD)."""
        if not self.stopped and self.read_offset < len(self.ids):
            prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
            full = self._decode(self.ids[self.prefix_offset:])
            self.text += full[len(prefix):]
            self.read_offset = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if self.stop and not self.stopped:
            hits = [i for i in (self.text.find(s, max(0, self.released - len(s) + 1)) for s in self.stop) if i >= 0]
            if hits:
                self.stopped = True
                self.text = self.text[: min(hits)]
                end = len(self.text)
            elif not final:
                # keep back a tail that may be the start of a stop string
                hold = max(len(s) - 1 for s in self.stop)
                end = max(self.released, len(self.text) - hold)
        out = self.text[self.released:end]
        self.released = end
        return out
