"""The official VQA accuracy, rule by rule. Every expected value is worked out by hand from the evaluator's rules
(see the comments), never by running the code under test.

Leave-one-out arithmetic used throughout, for 10 references of which m equal the (processed) prediction:
the m matching positions see m-1 other matches, the 10-m others see m, so
  acc(m) = (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10
  m=0: 0;  m=1: (1*0 + 9*1/3)/10 = 3/10 = 0.3;  m=2: (2*1/3 + 8*2/3)/10 = (2/3 + 16/3)/10 = 0.6;
  m=3: (3*2/3 + 7*1)/10 = (2 + 7)/10 = 0.9;  m>=4: (m*1 + (10-m)*1)/10 = 1.
"""

from __future__ import annotations

import json
import math

import pytest

from mmbench.metrics.vqa import (
    normalize_prediction,
    process_punctuation,
    process_references,
    question_accuracy,
    vqa_scores,
    write_submission,
)


def refs(*groups: tuple[str, int]) -> list[str]:
    out = [a for a, k in groups for _ in range(k)]
    assert len(out) == 10
    return out


@pytest.mark.parametrize(("m", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_min_n_over_3(m, expected):
    answers = refs(("cat", m), ("dog", 10 - m))
    assert question_accuracy("cat", answers) == pytest.approx(expected)


def test_leave_one_out_is_not_min_of_count_over_3():
    # min(1, count/3) without leaving one out would give 1/3, 2/3, 1 for m = 1, 2, 3; the official gives less.
    assert question_accuracy("cat", refs(("cat", 3), ("dog", 7))) == pytest.approx(0.9)
    # Fewer than 10 answers: 3 answers ["cat", "cat", "dog"]: the two "cat" positions see 1 other -> 1/3 each,
    # the "dog" position sees 2 -> 2/3; mean = (1/3 + 1/3 + 2/3) / 3 = 4/9.
    assert question_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx(4 / 9)


def test_number_words_map_to_digits_in_the_prediction_only():
    # "two" -> "2"; refs 4 x "2" -> m = 4 -> 1.0.
    assert question_accuracy("two", refs(("2", 4), ("3", 6))) == pytest.approx(1.0)
    # References are never digit-mapped: 3 x "two" stay "two"; only the 2 x "2" match -> m = 2 -> 0.6.
    assert question_accuracy("two", refs(("two", 3), ("2", 2), ("3", 5))) == pytest.approx(0.6)
    # A prediction "two" can never match the references "two": m = 0.
    assert question_accuracy("two", refs(("two", 5), ("3", 5))) == 0.0
    # "none" and "zero" both mean "0"; "Ten" lowercases first -> "10".
    assert normalize_prediction("none") == normalize_prediction("Zero") == "0"
    assert normalize_prediction("Ten") == "10"
    # Only whole words: "twenty two" -> "twenty 2", "someone" untouched.
    assert normalize_prediction("twenty two") == "twenty 2"
    assert normalize_prediction("someone") == "someone"


def test_articles_dropped_from_the_prediction_only():
    # "A Dog" -> lower "a dog" -> drop "a" -> "dog"; refs 3 x "dog" -> 0.9.
    assert question_accuracy("A Dog", refs(("dog", 3), ("cat", 7))) == pytest.approx(0.9)
    # References keep their articles: 8 x "the dog" stay "the dog"; prediction "the dog" -> "dog" matches only the
    # 2 x "dog" -> m = 2 -> 0.6.
    assert question_accuracy("the dog", refs(("the dog", 8), ("dog", 2))) == pytest.approx(0.6)
    # Articles only as whole words: "another" and "theater" survive; "an apple a day" -> "apple day".
    assert normalize_prediction("another theater") == "another theater"
    assert normalize_prediction("an apple a day") == "apple day"


def test_punctuation_replaced_by_space_or_deleted():
    # "t-shirt": "-" has no space beside it and no digit,digit -> replaced by a space -> "t shirt".
    assert process_punctuation("t-shirt") == "t shirt"
    assert normalize_prediction("t-shirt") == "t shirt"
    # "t-shirt - red": the text has "- " -> *every* "-" is deleted -> "tshirt  red" -> split/join -> "tshirt red".
    assert process_punctuation("t-shirt - red") == "tshirt  red"
    assert normalize_prediction("t-shirt - red") == "tshirt red"
    # Each character decides on its own: "(left) hand/arm": "(" is followed by "l", preceded by nothing -> space;
    # ")" is followed by " " -> deleted; "/" has letters on both sides -> space -> " left hand arm" -> "left hand arm".
    assert process_punctuation("(left) hand/arm") == " left hand arm"
    # "yes!" -> "!" not next to a space -> "yes " -> split/join -> "yes".
    assert normalize_prediction("yes!") == "yes"
    # Apostrophes and colons are not in the list: "o'clock" and "10:30" survive.
    assert normalize_prediction("o'clock") == "o'clock" and normalize_prediction("10:30") == "10:30"


def test_digit_comma_digit_deletes_all_punctuation():
    # "1,000" matches (\d)(,)(\d) -> every listed character is deleted, not spaced: "1000".
    assert normalize_prediction("1,000") == "1000"
    # With the number comma present, the "-" in "1,000-ish" is deleted too -> "1000ish";
    # without it, "10-ish" -> "-" replaced by a space -> "10 ish".
    assert normalize_prediction("1,000-ish") == "1000ish"
    assert normalize_prediction("10-ish") == "10 ish"
    # A comma between words (no digits): replaced by a space -> "red white" after split/join.
    assert normalize_prediction("red,white") == "red white"


def test_period_rule_and_its_32_occurrence_quirk():
    # A period followed by a digit stays: "2.5"; ".5" stays.
    assert normalize_prediction("2.5") == "2.5" and normalize_prediction(".5") == ".5"
    # Not followed by a digit -> deleted: "st. louis" -> "st louis"; "dog." -> "dog".
    assert normalize_prediction("st. louis") == "st louis" and normalize_prediction("dog.") == "dog"
    # The intended look-behind is a typo: a period *after* a digit is deleted too: "5." -> "5".
    assert normalize_prediction("5.") == "5"
    # At most 32 periods go (re.UNICODE == 32 lands in `count`): "yes" + 32 periods -> "yes";
    # "yes" + 40 periods -> 8 remain -> "yes........".
    assert normalize_prediction("yes" + "." * 32) == "yes"
    assert normalize_prediction("yes" + "." * 40) == "yes" + "." * 8
    # The 8 left-over periods make the answer wrong: refs 10 x "yes" -> m = 0 -> 0.
    assert question_accuracy("yes" + "." * 40, refs(("yes", 10))) == 0.0
    assert question_accuracy("yes" + "." * 32, refs(("yes", 10))) == 1.0


def test_contractions_table():
    # "dont" -> "don't"; refs 3 x "don't" -> m = 3 -> 0.9.
    assert question_accuracy("dont", refs(("don't", 3), ("no", 7))) == pytest.approx(0.9)
    assert normalize_prediction("whats that") == "what's that"
    assert normalize_prediction("Youre") == "you're"  # lowercased before the lookup
    # The table's "Ive" key can never match (words are lowercased first): "Ive" -> "ive", which scores 0 against
    # ten identical "i've" (kept as they are).
    assert normalize_prediction("Ive") == "ive"
    assert question_accuracy("Ive", refs(("i've", 10))) == 0.0
    # The table maps "somebody'd" to "somebodyd" (reversed in the original): reproduced.
    assert normalize_prediction("somebody'd") == "somebodyd"


def test_references_processed_only_when_they_disagree():
    # Ten identical "1,000" stay "1,000"; prediction "1,000" -> "1000" -> m = 0 -> 0.
    assert process_references(refs(("1,000", 10))) == ["1,000"] * 10
    assert question_accuracy("1,000", refs(("1,000", 10))) == 0.0
    # Nine "1,000" and one "1000" disagree -> punctuation applied -> ten "1000" -> m = 10 -> 1.0.
    assert question_accuracy("1,000", refs(("1,000", 9), ("1000", 1))) == pytest.approx(1.0)
    # Reference processing is punctuation only, without strip/split: "yes!" becomes "yes " (trailing space), so the
    # prediction "yes" (-> "yes") matches only the one plain "yes": m = 1 -> 0.3.
    assert process_references(refs(("yes!", 9), ("yes", 1))) == ["yes "] * 9 + ["yes"]
    assert question_accuracy("yes", refs(("yes!", 9), ("yes", 1))) == pytest.approx(0.3)
    # All ten "yes!" stay "yes!"; the prediction "yes!" normalises to "yes" -> 0.
    assert question_accuracy("yes!", refs(("yes!", 10))) == 0.0


def test_whitespace_newlines_and_tabs():
    # "\tyes\n" -> " yes " -> strip -> "yes"; refs 10 x "yes" -> 1.0.
    assert question_accuracy("\tyes\n", refs(("yes", 10))) == 1.0
    # "red\nand\twhite" -> "red and white"; multiple spaces collapse in the digit/article step.
    assert normalize_prediction("red\nand\twhite") == "red and white"
    assert normalize_prediction("  red   and  white ") == "red and white"
    # References get no whitespace cleanup: ten identical "yes " never match "yes".
    assert question_accuracy("yes", refs(("yes ", 10))) == 0.0


def test_scores_per_answer_and_question_type():
    # q0 yes/no: "yes" vs 10 x "yes"           -> 1.0
    # q1 number: "3" vs 2 x "3", 8 x "4"       -> m = 2 -> 0.6
    # q2 other:  "red" vs 1 x "red", 9 x "blue" -> m = 1 -> 0.3
    # q3 other:  "Blue." vs 5 x "blue", 5 x "navy" -> "blue" (period deleted, lowercased) -> m = 5 -> 1.0
    predicted = ["yes", "3", "red", "Blue."]
    answers = [refs(("yes", 10)), refs(("3", 2), ("4", 8))]
    answers += [refs(("red", 1), ("blue", 9)), refs(("blue", 5), ("navy", 5))]
    types = ["yes/no", "number", "other", "other"]
    qtypes = ["is the", "how many", "what color is the", "what color is the"]
    out = vqa_scores(predicted, answers, types, qtypes)
    # overall = (1.0 + 0.6 + 0.3 + 1.0) / 4 = 2.9 / 4 = 0.725
    assert out["vqa_accuracy"] == pytest.approx(0.725)
    assert out["vqa_accuracy_yes/no"] == pytest.approx(1.0)
    assert out["vqa_accuracy_number"] == pytest.approx(0.6)
    # other = (0.3 + 1.0) / 2 = 0.65
    assert out["vqa_accuracy_other"] == pytest.approx(0.65)
    assert out["vqa_accuracy_qtype_what color is the"] == pytest.approx(0.65)
    assert out["vqa_accuracy_qtype_how many"] == pytest.approx(0.6)
    # The evaluator would print round(100 * 0.725, 2) = 72.5.
    assert round(100 * out["vqa_accuracy"], 2) == 72.5
    # Without question types: exactly the four keys; a missing answer type is NaN, not 0.
    out = vqa_scores(predicted[:1], answers[:1], types[:1])
    assert set(out) == {"vqa_accuracy", "vqa_accuracy_yes/no", "vqa_accuracy_number", "vqa_accuracy_other"}
    assert math.isnan(out["vqa_accuracy_number"])


def test_revision_2021_differs_where_documented():
    # 2021: all ten "2" agree -> nothing is normalised -> "two" != "2" -> 0 (2017: "two" -> "2" -> 1.0).
    assert question_accuracy("two", refs(("2", 10)), revision="2021") == 0.0
    assert question_accuracy("two", refs(("2", 10))) == 1.0
    # 2021: refs disagree -> fully normalised -> 8 x "the dog" become "dog" -> m = 10 -> 1.0 (2017: 0.6, above).
    assert question_accuracy("the dog", refs(("the dog", 8), ("dog", 2)), revision="2021") == 1.0
    with pytest.raises(ValueError, match="unknown VQA evaluator revision"):
        question_accuracy("x", ["x"], revision="2019")


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="question 0 has no reference answers"):
        vqa_scores(["yes"], [[]], ["yes/no"])
    with pytest.raises(ValueError, match="2 predictions but 1 answer lists"):
        vqa_scores(["a", "b"], [["a"]], ["other", "other"])


def test_write_submission_is_the_official_result_format(tmp_path):
    path = write_submission(tmp_path / "sub" / "vqav2_test-dev2015_results.json", [458752000, 458752001], ["yes", "2"])
    assert json.loads(path.read_text()) == [
        {"question_id": 458752000, "answer": "yes"},
        {"question_id": 458752001, "answer": "2"},
    ]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    with pytest.raises(ValueError, match="question_id 7 appears twice"):
        write_submission(tmp_path / "dup.json", [7, 7], ["a", "b"])
