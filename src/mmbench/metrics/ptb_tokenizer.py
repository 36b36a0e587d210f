"""pycocoevalcap's caption tokenizer in pure Python: no Java, same output.

pycocoevalcap 1.2 (`tokenizer/ptbtokenizer.py`), which COCO captioning scores (CIDEr, BLEU, ...) go through, joins
every caption of a call with `"\\n"` (after turning the caption's own `"\\n"` into spaces), runs Stanford CoreNLP
3.4.1's `edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase` (a JFlex scanner, `PTBLexer.flex`) over
the whole text, reads one output line per caption, and drops the tokens in `PUNCTUATIONS`. This module replays that
scanner rule by rule on the same joined text (`tokenize_captions`), so it reproduces what the jar does, quirks
included (tests/test_cider.py runs the jar on the same captions and asserts identical strings):

- The scanner takes, at each position, the *longest* match over all rules (a trailing context `r1/r2` counts its
  lookahead, then gives it back), the earlier rule on ties. Words match case-insensitively, character classes do
  not: "AT&T" is one token, "At&T" three; "US$" is a currency sign, "us$" is not.
- Options in effect are the jar's defaults plus newlines as tokens: `-LRB-`-style brackets, LaTeX quotes
  (`` `` `` / `''`), `...` for ellipses, `--` for dashes of 3-4 hyphens, "cannot" -> "can not", "gonna" -> "gon
  na", British spellings kept, soft hyphens removed, spaces inside a fraction ("1 1/2") or phone number become
  U+00A0, untokenizable characters (emoji, control characters) deleted.
- `-lowerCase` lowercases tokens *after* normalisation, so brackets come out as `-lrb-`, `-rrb-`, `-lsb-`, ...,
  which pycocoevalcap's upper-case `PUNCTUATIONS` never match: they stay in the tokenized caption.
- An abbreviation-like token at a caption's end can look ahead into the *next* caption ("vitamin C." followed by a
  caption starting "A man" gives "vitamin c"; followed by "a man", "vitamin c."), which is why captions are
  tokenized together, in pycocoevalcap's order, and not one by one.
- The jar scans UTF-16 code units: a character outside the Basic Multilingual Plane is two surrogates here too.

Known differences (the only ones; each is rare in captions):
1. A line break other than `"\\n"` inside a caption (`"\\r"` not followed by the separator, U+2028, U+2029, form
   feed, vertical tab) is a newline token to the jar, so pycocoevalcap starts a new output line there and pairs
   every later caption with the wrong line (or drops it). Here it is a space. Nothing else changes.
2. Letters and digits: the jar's classes come from its JFlex Unicode tables (about Unicode 6.2), ours from Python's
   `unicodedata` minus the code points measured as newer (`ptb_rules._NEWER_THAN_JAR`: every BMP character was run
   through the jar, and with Python 3.11's Unicode 14 all 63,482 agree). A later Python whose Unicode adds letters
   to the Basic Multilingual Plane outside those ranges would keep them where the jar deletes them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import regex

from mmbench.metrics.ptb_rules import NEWLINE, NEWLINE_TOKEN, RULES, SPACE, Rule

# pycocoevalcap's list, verbatim: tokens dropped from the jar's output (upper-case brackets never occur, see above).
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


class _CompiledRule:
    """A rule as the scanner uses it: the longest match of `pattern lookahead`, then the split between the two."""

    def __init__(self, rule: Rule):
        tail = rule.lookahead or ""
        # POSIX: leftmost-*longest*, as a JFlex DFA matches (Python's default would stop at the first alternative).
        self.whole = regex.compile(f"(?:{rule.pattern})(?:{tail})", regex.POSIX | regex.V0)
        self.head = regex.compile(f"(?:{rule.pattern})", regex.V0) if rule.lookahead else None
        self.tail = regex.compile(f"(?:{tail})", regex.V0) if rule.lookahead else None
        self.action = rule.action

    def longest(self, text: str, pos: int, endpos: int) -> int:
        match = self.whole.match(text, pos, endpos)
        return match.end() - pos if match else 0

    def consumed(self, text: str, pos: int, length: int) -> int:
        """Where the rule's own text ends: the longest head whose remainder the lookahead matches exactly (JFlex
        1.5's general lookahead scans the head forwards and the lookahead backwards from the end, to the same
        split)."""
        if self.head is None:
            return length
        for cut in range(length - 1, 0, -1):
            if self.head.fullmatch(text, pos, pos + cut) and self.tail.fullmatch(text, pos + cut, pos + length):
                return cut
        raise AssertionError(f"no split of {text[pos : pos + length]!r}")  # the whole pattern matched, so one exists


@functools.cache
def _compiled_rules() -> list[_CompiledRule]:
    return [_CompiledRule(rule) for rule in RULES]  # compiled on first use: about half a second


@functools.lru_cache(maxsize=4096)
def _rules_starting_with(char: str) -> tuple[_CompiledRule, ...]:
    """The rules that can match text starting with `char` (partial matching says whether `char` is a prefix)."""
    return tuple(rule for rule in _compiled_rules() if rule.whole.match(char, partial=True))


# A run of ASCII letters before a space or the end is one token under every rule (none that could match longer reads
# past the space without a period, digit or bracket first), except the words that split. Most caption tokens are
# like this, and this shortcut makes tokenizing several times faster.
_PLAIN_WORD = regex.compile("[A-Za-z]+(?=[ \t\n]|$)")
_SPLIT_WORDS = frozenset({"cannot", "gonna", "gotta", "lemme", "gimme", "wanna"})


_BLANK_LINE = regex.compile(f"(?:{SPACE}|{NEWLINE})*")


# A tag whose quoted attribute could run on into the next line (an over-approximation: "<", a letter, then a quote).
_OPEN_TAG = regex.compile("<[A-Za-z][^\n]*['\"]")


def _windows(text: str) -> tuple[list[int], list[int]]:
    """Line starts, and for each line how far a match starting on it can reach (see `_scan`)."""
    starts = [0] + [m.end() for m in regex.finditer("\n", text)]
    ends = starts[1:] + [len(text) + 1]  # each line's end, its newline included
    reach, nonblank_after = [0] * len(starts), len(text)
    for i in range(len(starts) - 1, -1, -1):
        open_tag = _OPEN_TAG.search(text, starts[i], nonblank_after)
        reach[i] = len(text) if open_tag else nonblank_after
        if not _BLANK_LINE.fullmatch(text, starts[i], ends[i] - 1):
            nonblank_after = min(ends[i], len(text))
    return starts, reach


def _scan(text: str) -> Iterator[str]:
    """The jar's tokens for `text`, normalised but not yet lower-cased, with `NEWLINE_TOKEN` between captions.

    Matches are searched within a window, not to the end of the text (`regex` looks for a rule's required
    characters, "-" or "/", as far as the search may reach: scanning to the end made tokenizing quadratic). Only two
    things let a match cross a line: an acronym's lookahead over blank lines to the next word, and an SGML tag's
    quoted attribute; so the window is the rest of the line and the next non-blank line, or the whole text when a
    tag with a quote may start in it.
    """
    starts, reach = _windows(text)
    pos, end, line = 0, len(text), 0
    while pos < end:
        while line + 1 < len(starts) and starts[line + 1] <= pos:
            line += 1
        plain = _PLAIN_WORD.match(text, pos)
        if plain and plain.group().lower() not in _SPLIT_WORDS:
            yield plain.group()
            pos = plain.end()
            continue
        best, best_length, endpos = None, 0, reach[line]
        for rule in _rules_starting_with(text[pos]):
            length = rule.longest(text, pos, endpos)
            if length > best_length:
                best, best_length = rule, length
        assert best is not None, f"no rule matches at {text[pos : pos + 20]!r}"  # the last rule matches all but \n
        head = best.consumed(text, pos, best_length)
        token, used = best.action(text[pos : pos + head])
        pos += used
        if token is not None:
            yield token


def _to_utf16_units(text: str) -> str:
    """Characters beyond U+FFFF as surrogate pairs: the jar's scanner reads UTF-16 code units."""
    return text.encode("utf-16-le").decode("utf-16-le", "surrogatepass") if _has_astral(text) else text


def _has_astral(text: str) -> bool:
    return any(ord(c) > 0xFFFF for c in text) if not text.isascii() else False


def _from_utf16_units(token: str) -> str:
    if token.isascii() or not any(0xD800 <= ord(c) < 0xE000 for c in token):
        return token
    return token.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def jar_lines(captions: Sequence[str]) -> list[str]:
    """What the jar prints for pycocoevalcap's joined captions: one line per caption, lower-cased tokens, before
    pycocoevalcap drops punctuation (exposed so that tests compare with the jar at its own output)."""
    text = _to_utf16_units("\n".join(caption.replace("\n", " ") for caption in captions))
    # The jar's -preserveLines writer: tokens separated by one space, a line break for each newline token.
    pieces, line_start = [], True
    for token in _scan(text):
        if token == NEWLINE_TOKEN:
            pieces.append("\n")
            line_start = True
            continue
        if not line_start:
            pieces.append(" ")
        pieces.append(_from_utf16_units(token).lower())  # Java's toLowerCase(Locale.ENGLISH), token by token
        line_start = False
    lines = "".join(pieces).split("\n")
    if len(lines) != len(captions):  # every joining newline ends up as one line break (inside a token or not)
        raise AssertionError(f"{len(captions)} captions gave {len(lines)} lines")
    return lines


def tokenize_captions(captions: Sequence[str]) -> list[str]:
    """pycocoevalcap's `PTBTokenizer().tokenize`, for a flat list of captions in the order it would see them.

    The captions are scanned as one text, joined as pycocoevalcap joins them (a caption's own newlines become
    spaces), because a caption's last token can depend on the next caption. Returns one string per caption: the
    lower-cased tokens without `PUNCTUATIONS`, joined by single spaces ("" for an empty caption).
    """
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in jar_lines(captions)]


def ptb_tokenize(text: str) -> str:
    """One caption as pycocoevalcap tokenizes it alone (or as the last caption of a call): the end of the text is
    what follows it. Use `tokenize_captions` for several, since the next caption can change the last token."""
    return tokenize_captions([text])[0]
