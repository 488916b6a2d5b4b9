"""Constrained decoding: whatever the checkpoint, every answer has the layout of ModelAnswer.

A base model that was never fine-tuned on ``Caption:/Hashtags:/Alt text:`` (or one with random
weights) writes whatever it likes. Here llguidance, a grammar engine that plugs into any
decoder, computes at every step which tokens keep the answer inside its grammar, and
``GrammarMask`` (a transformers logits processor) masks the others out.

The grammar is built from the contract (contracts.ANSWER_*): the labels, one line per field,
one to ``num_hashtags`` hashtags of lowercase letters and digits (at most: a model with
fewer relevant tags than asked for stops rather than pads), and a token cap per field
(llguidance's ``max_tokens``). The caps are why llguidance: a field that reaches its cap is
closed and the grammar moves on, so a model that would never end a line still completes the
whole answer within ``answer_token_bound`` tokens; a character cap (xgrammar, outlines) bounds
characters, and a byte-level tokenizer can spend up to four tokens on one character.
"""

from __future__ import annotations

import logging
import os
from functools import cache

from snap2caption_service.core.contracts import (
    ANSWER_ALT_TEXT_MAX_TOKENS,
    ANSWER_CAPTION_MAX_TOKENS,
    ANSWER_HASHTAG_MAX_TOKENS,
    ANSWER_LABELS,
    HASHTAG_BODY_PATTERN,
    MAX_HASHTAGS,
    MIN_HASHTAGS,
)

log = logging.getLogger(__name__)

PARALLEL_MASK_MIN_CPUS = 8

# A caption or alt text starts with a visible character (never whitespace, so it is never empty
# once stripped) and holds no control characters; a caption holds no '#': hashtags go in their
# own line. Rust regex syntax (llguidance's).
_SPACE_CHARS = r"\x00-\x20\x7f\x85\xa0\u{1680}\u{2000}-\u{200b}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}\u{feff}"
_CONTROL_CHARS = r"\x00-\x1f\x7f"
CAPTION_REGEX = f"/[^{_SPACE_CHARS}#][^{_CONTROL_CHARS}#]*/"
ALT_TEXT_REGEX = f"/[^{_SPACE_CHARS}][^{_CONTROL_CHARS}]*/"
HASHTAG_REGEX = f"/#{HASHTAG_BODY_PATTERN}/"


def _lark_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _literals(num_hashtags: int) -> list[str]:
    caption, hashtags, alt_text = ANSWER_LABELS
    return [f"{caption} ", f"\n{hashtags} ", f"\n{alt_text} "] + [" "] * (num_hashtags - 1)


def answer_grammar(num_hashtags: int) -> str:
    """The answer's grammar in llguidance's Lark syntax.

    A leading space is allowed: a prompt ending in ``ASSISTANT:`` (LLaVA-1.5) is answered
    with " Caption: ...", a ChatML one (``<|im_start|>assistant\\n``) with "Caption: ...".
    """
    if num_hashtags < 1:
        raise ValueError(f"num_hashtags must be at least 1, got {num_hashtags}")
    caption, hashtags, alt_text = (_lark_string(s) for s in _literals(num_hashtags)[:3])
    return "\n".join(
        [
            f'start: " "? {caption} caption {hashtags} tags {alt_text} alt',
            f"caption[max_tokens={ANSWER_CAPTION_MAX_TOKENS}]: {CAPTION_REGEX}",
            "tags: tag" + (f' (" " tag){{0,{num_hashtags - 1}}}' if num_hashtags > 1 else ""),
            f"tag[max_tokens={ANSWER_HASHTAG_MAX_TOKENS}]: {HASHTAG_REGEX}",
            f"alt[max_tokens={ANSWER_ALT_TEXT_MAX_TOKENS}]: {ALT_TEXT_REGEX}",
        ]
    )


def answer_token_bound(num_hashtags: int) -> int:
    """The most tokens a constrained answer can take, end-of-sequence included.

    Every field is capped in tokens, and the fixed text (labels, separators, the optional
    leading space) takes at most one token per byte.
    """
    fixed = sum(len(s.encode()) for s in _literals(num_hashtags)) + 1
    fields = ANSWER_CAPTION_MAX_TOKENS + num_hashtags * ANSWER_HASHTAG_MAX_TOKENS + ANSWER_ALT_TEXT_MAX_TOKENS
    return fixed + fields + 1


@cache
def _compiled(num_hashtags: int) -> str:
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_lark(answer_grammar(num_hashtags))


class AnswerConstraint:
    """The grammar engine bound to one tokenizer: builds a ``GrammarMask`` per generate call."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: list[int]):
        import llguidance.hf
        from llguidance import LLExecutor, LLMatcher
        from transformers import PreTrainedTokenizerFast

        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise TypeError(
                f"constrained decoding needs a fast (Rust) tokenizer; this checkpoint has {type(tokenizer).__name__}. "
                "Set SNAP2CAPTION_CONSTRAINED=false to serve it unconstrained."
            )
        # Converting a tokenizer takes ~1 s for a 150k vocabulary: done once, at load.
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_token_ids)
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.tag_enders, self.by_bytes = _token_tables(self.tokenizer, vocab_size)
        # One compiled matcher per hashtag count; each generate call's rows get copies (cheap),
        # where building one from the grammar text costs ~1 ms. Built here, so a grammar this
        # tokenizer cannot take fails at load, not at the first request.
        self._matchers = {}
        for k in range(MIN_HASHTAGS, MAX_HASHTAGS + 1):
            matcher = LLMatcher(self.tokenizer, _compiled(k))
            if matcher.is_error():
                raise ValueError(f"the answer grammar does not compile for this tokenizer: {matcher.get_error()}")
            self._matchers[k] = matcher
        # Masks for a whole batch in one call on Rust threads, where there are cores to spare: on
        # 2 cores their spinning took CPU from torch's own threads (batch 32 on the demo model:
        # 1.36 s per call with the executor, 1.23 s row by row; docs/notes/real-checkpoints.md).
        self.executor = LLExecutor() if (os.cpu_count() or 1) >= PARALLEL_MASK_MIN_CPUS else None

    def matcher(self, num_hashtags: int):
        return self._matchers[num_hashtags].deep_copy()

    def mask(self, num_hashtags: list[int]) -> GrammarMask:
        """A logits processor for one generate call whose rows want these hashtag counts."""
        return GrammarMask(self, num_hashtags)


_TAG_SEPARATORS = (b" ", b"\n")
_HASHTAGS_LINE = ("\n" + ANSWER_LABELS[1] + " ").encode()
_ALT_TEXT_LINE = ("\n" + ANSWER_LABELS[2]).encode()


def _token_tables(tokenizer, vocab_size: int) -> tuple[dict[bytes, list[int]], dict[bytes, list[int]]]:
    """(tag enders, tokens by their bytes) for GrammarMask's repeated-hashtag rule.

    A tag ender is a token that can end a hashtag, listed under the bytes it adds to the tag
    first: token b"ach #" ends a tag with b"ach".
    """
    enders: dict[bytes, list[int]] = {}
    by_bytes: dict[bytes, list[int]] = {}
    for token in range(vocab_size):
        if tokenizer.is_special_token(token):
            continue
        text = tokenizer.decode_bytes([token])
        by_bytes.setdefault(text, []).append(token)
        cut = min((i for i in (text.find(sep) for sep in _TAG_SEPARATORS) if i >= 0), default=-1)
        if cut >= 0:
            enders.setdefault(text[:cut], []).append(token)
    return enders, by_bytes


def _open_tag(answer: bytes) -> tuple[bytes, list[bytes]] | None:
    """(the hashtag being written, the ones before it) while the answer is in its hashtags line."""
    start = answer.find(_HASHTAGS_LINE)
    if start < 0 or _ALT_TEXT_LINE in answer[start:]:
        return None
    *done, current = answer[start + len(_HASHTAGS_LINE) :].split(b" ")
    return (current, done) if current.startswith(b"#") else None


def _tag_tokens(tokens: list[bytes]) -> int:
    """How many of the answer's last tokens make up its open hashtag (the one adding '#' included)."""
    for n, token in enumerate(reversed(tokens), start=1):
        if b"#" in token:
            return n
    return 0


class _Row:
    """One row's answer so far, as the grammar accepted it."""

    __slots__ = ("matcher", "tokens", "text", "in_tags")

    def __init__(self, matcher):
        self.matcher = matcher
        self.tokens: list[bytes] = []
        self.text = b""
        self.in_tags = False  # in the hashtags line: the only place a hashtag can repeat

    def add(self, token_bytes: bytes) -> None:
        self.tokens.append(token_bytes)
        self.text += token_bytes
        if self.in_tags:
            self.in_tags = _ALT_TEXT_LINE not in self.text
        elif _HASHTAGS_LINE in self.text and _ALT_TEXT_LINE not in self.text:
            self.in_tags = True


class GrammarMask:
    """Logits processor: -inf for every token that would leave the grammar, row by row.

    One per generate call (its matchers follow that call's rows). Besides the grammar it keeps
    hashtags distinct, which no context-free grammar can say: a token that would end a hashtag
    as a repeat of an earlier one is masked too (unless nothing else is left, when the parse
    tops the list up instead). A row whose matcher fails (which the mask itself prevents) is
    logged and left unconstrained rather than failing the whole batch: its answer then goes
    through the same lenient parse as an unconstrained one.
    """

    def __init__(self, constraint: AnswerConstraint, num_hashtags: list[int]):
        import torch

        self.constraint = constraint
        self.rows = [_Row(constraint.matcher(k)) for k in num_hashtags]
        words = (constraint.vocab_size + 31) // 32
        self.bitmask = torch.full((len(self.rows), words), -1, dtype=torch.int32)
        self._shifts = torch.arange(32, dtype=torch.int32)
        self._eos_only = torch.zeros(words, dtype=torch.int32)
        for token in constraint.eos_token_ids:
            self._eos_only[token // 32] |= 1 << (token % 32) if token % 32 < 31 else -(2**31)
        self._started = False

    def _consume(self, input_ids) -> None:
        decode = self.constraint.tokenizer.decode_bytes
        for i, (row, token) in enumerate(zip(self.rows, input_ids[:, -1].tolist())):
            if row.matcher.is_stopped() or row.matcher.is_error():
                continue
            if row.matcher.consume_token(token):
                row.add(decode([token]))
            else:
                log.warning("grammar matcher refused token %d in row %d: %s", token, i, row.matcher.get_error())

    def _repeat_tokens(self, row: _Row) -> list[int]:
        """Tokens that would make the row's open hashtag a repeat of an earlier one: those that end
        it there, and, on the tag's last token under its cap (the grammar then ends it), those that
        complete the repeat."""
        open_tag = _open_tag(row.text)
        if open_tag is None:
            return []
        current, done = open_tag
        repeats = [tag[len(current) :] for tag in done if tag.startswith(current)]
        tokens = [t for rest in repeats for t in self.constraint.tag_enders.get(rest, ())]
        if _tag_tokens(row.tokens) >= ANSWER_HASHTAG_MAX_TOKENS - 1:
            tokens += [t for rest in repeats if rest for t in self.constraint.by_bytes.get(rest, ())]
        return tokens

    def __call__(self, input_ids, scores):
        if self._started:  # the previous step's choices, now in input_ids
            self._consume(input_ids)
        self._started = True
        active = []
        for i, row in enumerate(self.rows):
            if row.matcher.is_error():
                self.bitmask[i] = -1  # failed: unconstrained from here on
            elif row.matcher.is_stopped():
                # The answer is complete (its last field may have reached its cap): it can only end.
                self.bitmask[i] = self._eos_only
            elif self.constraint.executor is None:
                view = self.bitmask[i]
                row.matcher.unsafe_compute_mask_ptr(view.data_ptr(), view.numel() * view.element_size())
            else:
                active.append((row.matcher, i))
        if active:  # (llguidance.torch.fill_next_token_bitmask_par, without importing torch.compile)
            rows, words = self.bitmask.shape
            self.constraint.executor.unsafe_compute_mask_ptr(active, self.bitmask.data_ptr(), words * 4, rows)
        bits = (self.bitmask.unsqueeze(-1) >> self._shifts) & 1  # [rows, words, 32], token i = bit i % 32
        allowed = bits.view(len(self.rows), -1)[:, : scores.shape[-1]].bool()
        for i, row in enumerate(self.rows):
            if row.in_tags:
                repeats = self._repeat_tokens(row)
                if repeats:
                    kept = allowed[i].clone()
                    allowed[i, repeats] = False
                    if not allowed[i].any():  # nothing but a repeat can follow: allow it, the parse tops up
                        allowed[i] = kept
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))
