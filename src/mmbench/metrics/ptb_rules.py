"""Stanford CoreNLP 3.4.1's English tokenizer rules (`PTBLexer.flex`, a JFlex scanner) as Python regular expressions.

Each `Rule` is one of the lexer's rules, in its order, with the options pycocoevalcap runs it with (the jar's
defaults plus `tokenizeNLs`); `mmbench.metrics.ptb_tokenizer` scans text with them. JFlex's `%caseless` makes
literal words case-insensitive but leaves character classes alone, hence `_ci` on words and plain classes elsewhere.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import regex


def _bmp_class(predicate: Callable[[str], bool]) -> str:
    """The body of a `[...]` class holding every BMP character that satisfies `predicate`, as escaped ranges."""
    parts, start, prev = [], None, None
    for cp in range(0x10000):
        if 0xD800 <= cp < 0xE000 or not predicate(chr(cp)):
            continue
        if start is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            parts.append((start, prev))
        start = prev = cp
    parts.append((start, prev))
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in parts)


def _ci(word: str) -> str:
    """A literal that matches case-insensitively, the way JFlex's %caseless treats strings (not classes)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else regex.escape(c) for c in word)


def _ci_words(words: str) -> str:
    """`a|b|[X]yz`: each word case-insensitive, except a leading `[X]`, which stays case-sensitive."""
    out = []
    for word in words.split("|"):
        head = ""
        if word.startswith("["):
            head, word = word[:3], word[3:]
        optional = word.endswith("?")  # "Kans?": the last letter optional
        body = _ci(word[:-1]) + "?" if optional else _ci(word)
        out.append(head + body)
    return "(?:" + "|".join(out) + ")"


# --- character classes (bodies of [...]) -------------------------------------------------------------------------
# Letters and digits (per Python's unicodedata) that the jar's Unicode tables (about Unicode 6.2) do not have: found by
# running every BMP character through the jar. Unassigned code points in between are included, so that a later
# Python's Unicode does not add letters the jar would delete. U+1885-1886 went the other way (letters then, marks now).
_NEWER_THAN_JAR = " ".join(
    [
        "037F 0528-052F 0560 0588 05EF 0860-0887 0889-088E 08A1 08AD-08C9 0978 0980 09FC 0AF9 0C34 0C5A-0C5D",
        "0C80 0CDD 0D04 0D54-0D56 0D5F 0DE6-0DEF 0E86 0E89 0E8C 0E8E-0E93 0E98 0EA0 0EA8-0EA9 0EAC 13F5-13FD",
        "16F1-16F8 170D 171F 1878 191D-191E 19B0-19C0 19C8-19C9 1B4C 1C80-1CBF 1CF2-1CF3 1CFA 2C2F 2C5F",
        "312E-312F 31BB-31BF 4DB6-4DBF 9FCD-9FFF A698-A69D A78F A794-A79F A7AB-A7F7 A8FD-A8FE A9E0-A9E4",
        "A9E6-A9FE AA7E-AA7F AB30-AB5A AB5C-AB69 AB70-ABBF",
    ]
)
_JAR_ONLY_LETTERS = "\u1885\u1886"


_NEWER_CODE_POINTS = frozenset(cp for r in _NEWER_THAN_JAR.split() for cp in range(int(r[:4], 16), int(r[-4:], 16) + 1))


def _in_jar_tables(char: str) -> bool:
    return ord(char) not in _NEWER_CODE_POINTS


_LETTER_CLS = _bmp_class(  # JFlex [:letter:]
    lambda c: (unicodedata.category(c).startswith("L") and _in_jar_tables(c)) or c in _JAR_ONLY_LETTERS
)
_DIGIT_CLS = _bmp_class(lambda c: unicodedata.category(c) == "Nd" and _in_jar_tables(c))  # JFlex [:digit:]
_UPPER_CLS = _bmp_class(lambda c: unicodedata.category(c) == "Lu" and _in_jar_tables(c))  # JFlex [:uppercase:]
# Marks, modifier letters and the soft hyphen that the lexer adds to [:letter:] for its word rules.
_EXTRA_LETTER_CLS = (
    "\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d\u0384\u0385\u03cf\u03f6"
    "\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525\u055a-\u055f\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4"
    "\u05c5\u05c7\u0615-\u061a\u063b-\u063f\u064b-\u065e\u0670\u06d6-\u06ef\u06fa-\u06ff\u070f\u0711\u0730-\u074f"
    "\u0750-\u077f\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903\u093c\u093e-\u094e\u0951-\u0955\u0962-\u0963"
    "\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd\u09d7\u09e2\u09e3\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f"
    "\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2\u0bc6-\u0bc8\u0bca-\u0bcd\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44"
    "\u0d46-\u0d48\u0e30-\u0e3a\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd"
)
_MISC_SYMBOL_CLS = (
    "+%&~\\^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7\u0387\u05be"
    "\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d\u0703-\u070d"
    "\u07f6\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044"
    "\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20"
    "\uff3b-\uff40\uff5b-\uff65"
)

# --- macros (regular expressions shared by several rules) ----------------------------------------------------------
SPACE = "[ \t\u00a0\u2000-\u200a\u3000]"
NEWLINE = "(?:\r|\r?\n|\u2028|\u2029|\x0b|\x0c|\x85)"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
_NAME = "[A-Za-z][A-Za-z0-9_:.\\-]*"
SGML = f"<(?:[!?][A-Za-z\\-][^>\r\n]*|{_NAME}(?: +(?:{_NAME}|{_NAME} *= *(?:'[^']*'|\"[^\"]*\")))* */?|/{_NAME}) *>"
SENTEND = f"{SPACENL}(?:{SPACENL}|[{_UPPER_CLS}]|{SGML})"
DIGIT = f"[{_DIGIT_CLS}]"
LETTER_CHAR = f"[{_LETTER_CLS}{_EXTRA_LETTER_CLS}]"
SPLET = "&[aeiouAEIOU](?:" + "|".join(_ci(w) for w in ("acute", "grave", "uml")) + ");"
LETTER = f"(?:{LETTER_CHAR}|{SPLET})"
LETTER_OR_DIGIT = f"(?:[{_LETTER_CLS}{_EXTRA_LETTER_CLS}{_DIGIT_CLS}]|{SPLET})"
ALNUM = f"[{_LETTER_CLS}{_DIGIT_CLS}]"  # [:letter:]|[:digit:] without the lexer's extras
WORD = f"{LETTER}{LETTER_OR_DIGIT}*(?:[.!?]{LETTER}{LETTER_OR_DIGIT}*)*"
APOS = "(?:['\u0092\u2019]|" + _ci("&apos;") + ")"
APOS_ETC = f"(?:{APOS}|[`\u0091\u2018\u201b])"  # apostrophe-like characters found inside words
HYPHEN = "[\\-_\u058a\u2010\u2011]"
SPAMP = _ci("&amp;")
_US_PAIRS = (  # non-U.S, U.S.-U.K and the like
    _ci_words("Canada|Sino|Korean|EU|Japan|non")
    + "-"
    + _ci("U.S")
    + "|"
    + _ci("U.S.-")
    + f"(?:{_ci('U.K')}|{_ci('U.S.S.R')})"
)
ACRO = f"(?:[A-Za-z](?:\\.[A-Za-z])*|{_US_PAIRS})"  # U.S, e.g (a dotted acronym without its final period)
ACRO2 = f"(?:[A-Za-z](?:\\.[A-Za-z])+|{_US_PAIRS})"
INSENTP = "[,;:\u3001]"
REDAUX = f"{APOS}(?:[msdMSD]|{_ci('re')}|{_ci('ve')}|{_ci('ll')})"
SREDAUX = f"[nN]{APOS_ETC}[tT]"
SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"  # a word that can take "n't": it does not end in n
DATE = f"{DIGIT}{{1,2}}[\\-/]{DIGIT}{{1,2}}[\\-/]{DIGIT}{{2,4}}"
NUMBER = f"[\\-+]?(?:{DIGIT}+|{DIGIT}*(?:[.:,\u00ad\u066b\u066c]{DIGIT}+)+)"
FRAC = f"(?:{DIGIT}{{1,4}}[\\- \u00a0])?{DIGIT}{{1,4}}(?:\\\\?/|\u2044){DIGIT}{{1,4}}"
_URL_END = '[^ \t\n\f\r"<>|.!?(){},\\-]'  # a URL does not end in punctuation
FULLURL = _ci("http") + '[sS]?://[^ \t\n\f\r"<>|(){}]+' + _URL_END
LIKELYURL = (
    "(?:(?:" + _ci("www") + '\\.(?:[^ \t\n\f\r"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4})'
    # `,-_` is a range (comma to underscore): these host names have no digits, capitals or hyphens.
    "|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\\.)+" + _ci_words("com|net|org|edu") + "))"
    '(?:/[^ \t\n\f\r"<>|()]+' + _URL_END + ")?"
)
_EMAIL_PART = '[^ \t\n\f\r"<>|(){}.\u00a0]+'
EMAIL = (
    f'(?:{_ci("&lt;")}|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00a0{{}}]*@(?:{_EMAIL_PART}\\.)*{_EMAIL_PART}'
    f"(?:{_ci('&gt;')}|>)?"
)
TWITTER = f"@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+"
THING_PREFIX = f"(?:[dDoOlL]{APOS_ETC}{ALNUM})?"  # d'Ar..., o'clock, l'...
THING = f"{THING_PREFIX}{ALNUM}+(?:{HYPHEN}{THING_PREFIX}{ALNUM}+)*"
THINGA = f"[A-Z]+(?:(?:[+&]|{SPAMP})[A-Z]+)+"
THING3 = "[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:[A-Za-z0-9\u00ad]+|{ACRO2}\\.))+"
FILENAME_EXT = _ci_words(
    "bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py"
    "|sql|tar|txt|wav|x|xml|zip"
)
FILENAME = f"{LETTER_OR_DIGIT}+(?:\\.{LETTER_OR_DIGIT}+)*\\.{FILENAME_EXT}"
_L = f"[{_LETTER_CLS}]"
APOWORD = "|".join(
    [
        f"{APOS}[nN]{APOS}?",  # rock 'n' roll
        f"[lLdDjJ]{APOS}",
        *(_ci(w) + APOS for w in ("Dunkin", "somethin", "ol")),
        APOS + _ci("em"),
        f"[A-HJ-XZn]{APOS_ETC}{_L}{{2}}{_L}*",  # O'Neil, D'Amico (one letter, apostrophe, 2+ letters)
        f"{APOS}[2-9]0[sS]",  # '90s
        APOS + _ci("til") + "[lL]?",
        f"{_L}{_L}*[aeiouyAEIOUY]{APOS_ETC}[aeiouA-Z]{_L}*",
        APOS + _ci("cause"),
        _ci("cont'd") + "\\.?",
        *(_ci(w) for w in ("'twas", "nor'easter", "c'mon", "e'er", "s'mores", "ev'ry", "li'l", "nat'l")),
        f"[oO]{APOS_ETC}[oO]",
    ]
)
# Abbreviations, from the lexer's hand-made lists. ABBREV1 is usually followed by a lower-case word.
ABBREV1 = (
    "(?:"
    + _ci_words(
        # months, days, states (some case-sensitive on their first letter), companies, numbers, titles
        "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
        "|Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|Minn|[M]iss"
        "|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo"
        "|Inc|Cos?|Corp|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys|tel|est|ext|sq|Jr|Sr|Bros|Blvd|Rd|Esq|etc|al|seq|Bldg"
    )
    + "|[pP][pP]?[tT][ye][sS]?"  # Pty, Ptys, Pte: the [ye] is a case-sensitive class
    + "|(?:"
    + _ci_words("Ed|Ph")
    + ")\\.[dD])\\."
)
ABBREV4 = (
    "(?:"
    + _ci_words(
        "Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave"
        "|Pres|Lieut|Hon|Brig|Cmdr|Comdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc"
        "|vs|Alex|Wm|Jos|Cie|cf|TREAS|Ph|Invt|Elec|Natl|Dept"
    )
    + "|[mM][ft][gG]|"  # Mfg, Mtg: the [ft] is a case-sensitive class
    + _ci("a.k.a")
    + f"|{ACRO})"
)
ABBREV3 = "(?:" + _ci_words("ca|figs?|prop|nos?|art|bldg|pp|op") + ")\\."
PHONE = (
    "(?:\\([0-9]{2,3}\\)[ \u00a0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[\\- \u00a0])?[0-9]{2,4}[\\- \u00a0])"
    "[0-9]{3,4}[\\- \u00a0]?[0-9]{3,5}"
    "|(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}"
)
LDOTS = "\\.{3,5}|(?:\\.[ \u00a0]){2,4}\\.|[\x85\u2026]"
QUOTES = f"{APOS}|''|[`\u2018\u2019\u201a\u201b\u201c\u201d\x91\x92\x93\x94\u201e\u201f\u2039\u203a\u00ab\u00bb]{{1,2}}"
DBLQUOT = '(?:"|' + _ci("&quot;") + ")"
TBSPEC = (
    "-(?:"
    + "|".join(_ci(w) for w in ("RRB", "LRB", "RCB", "LCB", "RSB", "LSB"))
    + ")-|"
    + "|".join(
        [_ci("C.D.s"), _ci("pro-"), _ci("anti-"), f"[sS](?:&|{SPAMP})[pP]-500", f"[sS](?:&|{SPAMP})[lL][sS]"]
        + [f"{_ci('Cap')}{APOS}[nN]", f"[cC]{APOS}{_ci('est')}"]
    )
)
SMILEY = "[<>]?[:;=][\\-o*']?[()DPdpO\\\\{@|\\[\\]]"
# The first alternative is a typo upstream ("\\[" where "[" was meant): it matches the literal text ".[^x=~<>]".
ASIANSMILEY = (
    "[\\^x=~<>]\\.\\[\\^[xX]=~<>\\]|[\\-\\^x=~<>']_[\\-\\^x=~<>']|\\([\\-\\^x=~<>'][_.]?[\\-\\^x=~<>']\\)"
    "|\\([\\^x=~<>']-[\\^x=~<>'`]\\)"
)
ACRONYM_FOLLOWER = (
    "(?:"
    + _ci_words(
        "[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|[H]owever"
        "|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|[S]he|[S]ince|[S]o|[S]ome|[S]uch"
        "|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou"
    )
    + "|[M]"
    + _ci("r.")
    + "|[M]"
    + _ci("s.")
    + f"|{SGML})"
)

# --- token normalisations (the rules' actions) --------------------------------------------------------------------
NEWLINE_TOKEN = "\n"  # stands for the jar's *NL* token: a line break in its -preserveLines output
_LEFT_QUOTES = (("&apos;", "`"), ("'", "`"), ('"', "``"), ("&quot;", "``"))
_RIGHT_QUOTES = (("&apos;", "'"), ("'", "'"), ('"', "''"), ("&quot;", "''"))
_CURLY_QUOTES = str.maketrans(
    {**dict.fromkeys("\x91\u2018\u201b\u2039", "`"), **dict.fromkeys("\x92\u2019\u203a", "'")}
    | {**dict.fromkeys("\x93\u201c\u00ab", "``"), **dict.fromkeys("\x94\u201d\u00bb", "''")}
)
_FRACTIONS = str.maketrans({"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"})
_CURRENCY = str.maketrans({"\u00a2": "cents", "\u00a3": "#", **dict.fromkeys("\x80\u00a4\u20a0\u20ac", "$")})
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "{": "-LCB-", "}": "-RCB-", "[": "-LSB-", "]": "-RSB-"}
_AMP = regex.compile("&amp;", regex.IGNORECASE)

Action = Callable[[str], "tuple[str | None, int]"]  # matched text -> (token or None, characters consumed)


def _quotes(left: bool) -> Action:
    """LaTeX quotes: straight quotes by their guessed side, curly ones by their own."""

    def action(text: str) -> tuple[str, int]:
        out = text
        for raw, latex in _LEFT_QUOTES if left else _RIGHT_QUOTES:  # case-sensitive, as the jar's patterns are
            out = out.replace(raw, latex)
        return out.translate(_CURLY_QUOTES), len(text)

    return action


def _keep(text: str) -> tuple[str, int]:
    return text, len(text)


def _skip(text: str) -> tuple[None, int]:
    return None, len(text)


def _no_soft_hyphens(text: str) -> tuple[str, int]:
    return text.replace("\u00ad", "") or "-", len(text)


def _nbsp(text: str) -> tuple[str, int]:
    return text.replace(" ", "\u00a0"), len(text)


def _parens(text: str) -> tuple[str, int]:
    return text.replace("(", "-LRB-").replace(")", "-RRB-"), len(text)


def _phone(text: str) -> tuple[str, int]:
    return _parens(text.replace(" ", "\u00a0"))


def _amp(text: str) -> tuple[str, int]:
    return _AMP.sub("&", text), len(text)


def _split_after(n: int) -> Action:
    """'cannot' -> 'can' + 'not': the rule keeps its first characters and gives the rest back to the scanner."""
    return lambda text: (text[: len(text) - n], len(text) - n)


def _period_again(text: str) -> tuple[str, int]:
    """An abbreviation that may end the sentence: the token keeps its period and the period is scanned again."""
    return text, len(text) - 1


def _acronym_before_sentence(text: str) -> tuple[str, int]:
    # "I." before "The": the letter alone, then the period; "U.S." keeps its period and yields it again.
    return (text[0], 1) if len(text) == 2 else (text, len(text) - 1)


def _hyphens(text: str) -> tuple[str, int]:
    return ("--" if 3 <= len(text) <= 4 else text), len(text)


def _line_break(text: str) -> tuple[str | None, int]:
    # Only the "\n" that joins two captions breaks the line (known difference 1: any other line break is a space).
    return (NEWLINE_TOKEN if "\n" in text else None), len(text)


def _untokenizable(text: str) -> tuple[None, int]:
    return None, 1  # the jar logs the first one and deletes them all


@dataclass(frozen=True)
class Rule:
    pattern: str  # what the rule consumes (JFlex's r1)
    action: Action
    lookahead: str | None = None  # trailing context r2: must follow, counts for the longest match, is not consumed


def _const(token: str) -> Action:
    return lambda text: (token, len(text))


# The lexer's rules in its order (the earlier wins a tie in length); the <YyStrictlyTreebank3> rule is left out
# since that state is off by default.
RULES = [
    Rule("[cC]\\+\\+", _keep),
    Rule("[cCfF]#", _keep),
    Rule(_ci("cannot"), _split_after(3)),
    Rule(_ci("'twas"), _split_after(3)),
    Rule(_ci("'tis"), _split_after(2)),
    Rule(_ci_words("gonna|gotta|lemme|gimme|wanna"), _split_after(2)),
    Rule(SGML, _nbsp),
    Rule("&(?:" + _ci_words("MD|mdash|ndash") + ");|[\x96\x97\u2013\u2014\u2015]", _const("--")),
    Rule(SPAMP, _amp),
    Rule("&(?:" + _ci_words("HT|TL|UR|LR|QC|QL|QR|odq|cdq") + "|#[0-9]+);", _keep),
    Rule(WORD, _no_soft_hyphens, REDAUX),
    Rule(SWORD, _no_soft_hyphens, SREDAUX),
    Rule(WORD, _no_soft_hyphens),
    Rule(APOWORD, _keep),
    Rule(f"[yY]{APOS}", _keep, _L),
    Rule(FULLURL, _keep),
    Rule(LIKELYURL, _keep),
    Rule(EMAIL, _keep),
    Rule(TWITTER, _keep),
    Rule(REDAUX, _quotes(left=False), "[^A-Za-z]"),
    Rule(SREDAUX, _quotes(left=False), "[^A-Za-z]"),
    Rule(DATE, _keep),
    Rule(NUMBER, _no_soft_hyphens),
    Rule("[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)", _keep),
    Rule(FRAC, _nbsp),
    Rule("[\u00bc\u00bd\u00be\u2153-\u215e]", lambda text: (text.translate(_FRACTIONS), len(text))),
    Rule(TBSPEC, _amp),
    Rule(THING3, _keep),
    Rule("[A-Z]*\\$|#", _keep),
    Rule(
        "[\u00a2\u00a3\u00a4\u00a5\x80\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]",
        lambda text: (text.translate(_CURRENCY), len(text)),
    ),
    Rule(f"{ACRO}\\.", _acronym_before_sentence, f"{SPACENL}+{ACRONYM_FOLLOWER}{SPACENL}"),
    Rule(ABBREV3, _keep, f"{SPACENL}?{DIGIT}"),  # "fig." and "no." keep their period before a number
    Rule("(?:" + _ci("pt") + "[eyEY]|" + _ci("co") + ")\\.", _keep, f"{SPACE}(?:{_ci_words('ltd|lim')})"),
    Rule(ABBREV1, _period_again, SENTEND),
    Rule(ABBREV1, _keep, "[\\s\\S]{2}"),
    Rule(ABBREV1, _period_again),  # at the end of the text
    Rule(f"{ABBREV4}\\.", _keep),
    Rule(ABBREV4, _keep, SPACE),
    Rule(ACRO, _keep, SPACENL),
    Rule(f"{APOS}[0-9][0-9]", _keep, SPACENL),
    Rule(FILENAME, _keep, f"(?:{SPACENL}|[.?!,])"),
    Rule(f"{WORD}\\.", _no_soft_hyphens, INSENTP),
    Rule(PHONE, _phone),
    Rule(DBLQUOT, _quotes(left=True), "[A-Za-z0-9$]"),
    Rule(DBLQUOT, _quotes(left=False)),
    Rule("\x7f", _skip),
    Rule("<|" + _ci("&lt;"), _const("<")),
    Rule(">|" + _ci("&gt;"), _const(">")),
    Rule(SMILEY, _parens, "[^A-Za-z0-9]"),
    Rule(ASIANSMILEY, _parens),
    *(Rule(regex.escape(bracket), _const(token)) for bracket, token in _BRACKETS.items()),
    Rule("-+", _hyphens),
    Rule(LDOTS, _const("...")),
    Rule("@+|#+|_+", _keep),
    Rule("\\*+|(?:\\\\\\*){1,3}", _keep),
    Rule(INSENTP, _keep),
    Rule("[?!]+", _keep),
    Rule("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]", _keep),
    Rule("=", _keep),
    Rule("/", _keep),
    Rule(f"{HTHING}\\.", _no_soft_hyphens, INSENTP),
    Rule(HTHING, _no_soft_hyphens),
    Rule(f"{THING}\\.", _keep, INSENTP),
    Rule(THING, _keep),
    Rule(f"{THINGA}\\.", _amp, INSENTP),
    Rule(THINGA, _amp),
    Rule("'", _quotes(left=True), "[A-Za-z][^ \t\n\r\u00a0]"),  # a quote opening a word
    Rule(REDAUX, _quotes(left=False)),
    Rule(SREDAUX, _quotes(left=False)),
    Rule(QUOTES, _quotes(left=False)),
    Rule("<<|>>", _keep),
    Rule(f"[{_MISC_SYMBOL_CLS}]", _keep),
    Rule(f"\\x00|{SPACE}+|[\u200b\u200e\u200f\ufeff]", _skip),
    Rule(NEWLINE, _line_break),
    Rule(_ci("&nbsp;"), _skip),
    Rule("[^\n]", _untokenizable),
]
