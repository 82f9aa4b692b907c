"""Words with planted skip-trigram rules and copying (chapter 02)."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers.data._common import BOS, Language

# The paper's own examples of skip-trigrams ("Skip-Trigram 'Bugs'" and the one-layer section):
# source … destination → output. "keep" is the shared source of the "in → mind / at → bay" pair.
SKIP_TRIGRAM_RULES: tuple[tuple[str, str, str], ...] = (
    ("keep", "in", "mind"),
    ("keep", "at", "bay"),
    ("def", "(", "self"),
    ("left", "\\", "right"),
    ("twitter", "/", "status"),
    ("tbody", "<", "td"),
    ("open", ",", "rb"),
)
# "back and → forth" (also the paper's): fires only when the source is right before the destination,
# which a head can only learn with positional attention (a previous-token head).
ADJACENT_RULES: tuple[tuple[str, str, str], ...] = (("back", "and", "forth"),)
FILLER_WORDS: tuple[str, ...] = (
    "the", "a", "of", "and", "to", "is", "it", "that", "for", "on",
    "with", "as", "was", "he", "she", "they", "we", "you", "this", "be",
)  # fmt: skip


class SkipTrigramLanguage(Language):
    """Word sequences with planted skip-trigram rules "A … B → C" and copying.

    Each next token is drawn, given the sequence so far, as follows:
    1. if the current token is a rule's destination B and the rule's source A occurred anywhere
       earlier in the sequence, the rule's output C, with probability `p_rule`; for an
       `adjacent_rules` entry, only if A is the token right before B;
    2. otherwise, with probability `p_copy`, a copy of a uniformly chosen earlier token (tokens
       seen earlier are likelier to recur);
    3. otherwise a background token: filler words, destinations and sources at fixed frequencies
       (`background`), so that destinations also occur without their source, which gives each rule
       a baseline.
    Rules with a shared source (keep … in → mind, keep … at → bay) are the paper's example of the
    factored-form "bug". Each destination belongs to one rule, so at most one rule fires.

    Example (made up): "<BOS> the keep of it in mind was at bay …".
    """

    name = "skip_trigrams"

    def __init__(
        self,
        rules: tuple[tuple[str, str, str], ...] = SKIP_TRIGRAM_RULES,
        adjacent_rules: tuple[tuple[str, str, str], ...] = ADJACENT_RULES,
        fillers: tuple[str, ...] = FILLER_WORDS,
        p_rule: float = 0.8,
        p_copy: float = 0.15,
        seed: int = 0,
    ):
        rules = tuple(tuple(r) for r in rules)
        adjacent_rules = tuple(tuple(r) for r in adjacent_rules)
        if any(
            len(r) != 3 or not all(isinstance(w, str) for w in r) for r in rules + adjacent_rules
        ):
            raise ValueError("each rule must be three words (source, destination, output)")
        if not 0 <= p_rule <= 1 or not 0 <= p_copy <= 1:
            raise ValueError(f"p_rule and p_copy must be in [0, 1], got {p_rule}, {p_copy}")
        dests = [b for _, b, _ in rules] + [b for _, b, _ in adjacent_rules]
        if len(set(dests)) != len(dests):
            raise ValueError(f"each destination must belong to one rule, got {dests}")
        self.rules, self.adjacent_rules = rules, adjacent_rules
        self.fillers = tuple(fillers)
        self.p_rule, self.p_copy, self.seed = p_rule, p_copy, seed
        all_rules = self.rules + self.adjacent_rules
        sources = list(dict.fromkeys(a for a, _, _ in all_rules))
        outputs = list(dict.fromkeys(c for _, _, c in all_rules if c not in sources + dests))
        words = list(dict.fromkeys([*sources, *dests, *outputs, *self.fillers]))
        self.vocab = ["<BOS>", *words]
        self.token_to_id = {w: i for i, w in enumerate(self.vocab)}
        self.sources = [self.token_to_id[a] for a in sources]
        self.rule_ids = [tuple(self.token_to_id[w] for w in rule) for rule in self.rules]
        self.adjacent_rule_ids = [
            tuple(self.token_to_id[w] for w in rule) for rule in self.adjacent_rules
        ]
        # Background frequencies: fillers common, destinations and sources moderately so.
        weights = torch.zeros(len(self.vocab), dtype=torch.float64)
        for w in self.fillers:
            weights[self.token_to_id[w]] = 1.0
        for a, b, _ in self.rules:
            weights[self.token_to_id[b]] = 1.5
            weights[self.token_to_id[a]] = 0.6
        for a, _, _ in self.adjacent_rules:
            weights[self.token_to_id[a]] = 1.5  # often present but not right before B
        self.background = weights / weights.sum()
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def d_vocab(self) -> int:
        return len(self.vocab)

    def _labels(self) -> list[str]:
        return self.vocab[1:]

    def encode(self, words: str | list[str]) -> Tensor:
        """Token ids of space-separated words, BOS first: `[pos]`."""
        words = words.split() if isinstance(words, str) else list(words)
        unknown = [w for w in words if w not in self.token_to_id]
        if unknown:
            raise ValueError(f"unknown words {unknown}; the vocabulary is {self.vocab[1:]}")
        return torch.tensor([BOS, *(self.token_to_id[w] for w in words)])

    def rule_table(self) -> Tensor:
        """`[d_vocab (source), d_vocab (destination)]` output token of each rule, or -1."""
        table = torch.full((self.d_vocab, self.d_vocab), -1, dtype=torch.long)
        for a, b, c in self.rule_ids:
            table[a, b] = c
        return table

    def _sample(self, batch_size: int, n_ctx: int, gen: torch.Generator) -> Tensor:
        """One step per position, vectorised over the batch."""
        table = self.rule_table()
        is_source = torch.zeros(self.d_vocab, dtype=torch.bool)
        is_source[self.sources] = True
        tokens = torch.full((batch_size, n_ctx), BOS, dtype=torch.long)
        seen = torch.zeros(batch_size, self.d_vocab, dtype=torch.bool)  # sources seen so far
        rows = torch.arange(batch_size)
        cum_background = self.background.float().cumsum(0)
        for t in range(1, n_ctx):
            current = tokens[:, t - 1]
            seen[rows, current] |= is_source[current]
            # the rule (if any) whose destination is `current` and whose source was seen
            outputs = table[:, current].T  # [batch, source]
            fired = (outputs >= 0) & seen
            rule_output = torch.where(fired.any(-1), outputs.max(-1).values, -1)
            if t >= 2:
                for a, b, c in self.adjacent_rule_ids:
                    hit = (tokens[:, t - 2] == a) & (current == b)
                    rule_output = torch.where(hit, c, rule_output)
            u = torch.rand(batch_size, 3, generator=gen)
            background = torch.searchsorted(cum_background, u[:, 1:2].contiguous()).clamp_max(
                self.d_vocab - 1
            )
            earlier = 1 + (u[:, 2] * max(t - 1, 1)).long().clamp_max(max(t - 2, 0))
            copy = tokens[rows, earlier]
            nxt = background[:, 0]
            use_copy = (u[:, 0] < self.p_copy) & (t > 1)
            nxt = torch.where(use_copy, copy, nxt)
            use_rule = (rule_output >= 0) & (u[:, 0] >= 1 - self.p_rule)
            tokens[:, t] = torch.where(use_rule, rule_output, nxt)
        return tokens

    def _truth(self) -> dict:
        return {"vocab": list(self.vocab)}
