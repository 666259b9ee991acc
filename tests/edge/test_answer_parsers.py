"""The text parsers of `yes_no`, `choice` and `text` monitors do not read more into an answer
than it says: whole words only, negated mentions do not count, the first mention wins."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.monitors import parse_choice, parse_text, parse_yes_no

MACHINE = ["running normally", "idle", "failing"]

# (answer, choices, alert_on, verdict, choice): what an operator reading the answer concludes
CHOICE_CORPUS = [
    ("There is no knocking.", ["knocking", "normal"], ["knocking"], "negative", None),
    ("There is no knocking, it sounds normal.", ["knocking", "normal"], ["knocking"], "negative", "normal"),
    ("It is not failing, just idle.", MACHINE, ["failing"], "negative", "idle"),
    ("Not failing; idle.", MACHINE, ["failing"], "negative", "idle"),
    ("Cartoon music", ["cart", "music box"], ["cart"], "unknown", None),
    ("Yesterday's recording", ["yes", "no"], ["yes"], "unknown", None),
    ("Knocking is not present.", ["knocking", "normal"], ["knocking"], "negative", None),
    ("The knocking isn't there", ["knocking", "normal"], ["knocking"], "negative", None),
    ("Without any knocking", ["knocking", "normal"], ["knocking"], "negative", None),
    ("I don't hear knocking", ["knocking", "normal"], ["knocking"], "negative", None),
    ("No knocking", ["knocking", "no knocking"], ["knocking"], "negative", "no knocking"),
    ("Knocking, and it is getting louder", ["knocking", "no knocking"], ["knocking"], "positive", "knocking"),
    ("Failing, it grinds", MACHINE, ["failing"], "positive", "failing"),
    ("The machine is idle, but it is failing soon", MACHINE, ["failing"], "negative", "idle"),
    ("It is failing. It was idle before.", MACHINE, ["failing"], "positive", "failing"),
    ("It doesn't sound normal; there's knocking", ["knocking", "normal"], ["knocking"], "positive", "knocking"),
    ("knocking that does not stop", ["knocking", "normal"], ["knocking"], "positive", "knocking"),
    ("It is not idle.", MACHINE, ["failing"], "unknown", None),
    ("Running   Normally.", MACHINE, ["failing"], "negative", "running normally"),
    ("**Failing**", MACHINE, ["failing"], "positive", "failing"),
    ("no idea", MACHINE, ["failing"], "unknown", None),
    ("The idler wheel squeaks", MACHINE, ["failing"], "unknown", None),
    ("It isn\u2019t failing, it\u2019s idle", MACHINE, ["failing"], "negative", "idle"),
    ("a present, different failing sound", MACHINE, ["failing"], "positive", "failing"),
]


@pytest.mark.parametrize("answer, choices, alert_on, verdict, choice", CHOICE_CORPUS)
def test_choice_corpus(answer, choices, alert_on, verdict, choice):
    p = parse_choice(answer, choices, alert_on)
    assert (p.verdict, p.choice) == (verdict, choice)


@pytest.mark.parametrize("answer, verdict", [
    ("Yes.", "positive"), ("yes, there is knocking", "positive"), ('"No"', "negative"),
    ("**Yes**", "positive"), ("  NO", "negative"), ("No, there is no knocking.", "negative"),
    ("Yesterday's recording", "unknown"), ("Nope", "unknown"), ("Maybe", "unknown"),
    ("There is no doubt: yes", "unknown"), ("Not sure", "unknown"), ("", "unknown"),
    ("Yes's", "unknown"),
])
def test_yes_no_corpus(answer, verdict):
    assert parse_yes_no(answer).verdict == verdict


@pytest.mark.parametrize("answer, verdict", [
    ("a loud GRINDING noise", "positive"), ("a hum", "negative"),
    ("no grinding at all", "negative"), ("There is no grinding, but a squeal", "positive"),
    ("The grinding is not audible", "negative"),
])
def test_text_regex_corpus(answer, verdict):
    assert parse_text(answer, "grind|squeal").verdict == verdict


# ---------------------------------------------------------------- properties
WORDS = ["pump", "hum", "valve", "alarm", "motor", "belt", "hiss", "siren", "fan", "drip"]
FILLER = st.lists(st.sampled_from(["the", "a", "sound", "is", "loud", "here", "machine", "it",
                                   "seems", "to", "be", "and", "clear"]), max_size=6)
choice_sets = st.lists(st.sampled_from(WORDS), min_size=2, max_size=5, unique=True)


@settings(max_examples=100, deadline=None)
@given(choices=choice_sets, data=st.data(), lead=FILLER, tail=FILLER)
def test_a_plain_mention_is_found(choices, data, lead, tail):
    c = data.draw(st.sampled_from(choices))
    answer = " ".join(lead + [c.upper() if data.draw(st.booleans()) else c] + tail) + "."
    p = parse_choice(answer, choices, [c])
    assert (p.verdict, p.choice) == ("positive", c)


@settings(max_examples=100, deadline=None)
@given(choices=choice_sets, data=st.data(), lead=FILLER,
       neg=st.sampled_from(["no", "not", "without", "isn't", "never", "no sign of", "not a"]))
def test_a_negated_mention_never_wins(choices, data, lead, neg):
    c = data.draw(st.sampled_from(choices))
    p = parse_choice(" ".join(lead + [neg, c]), choices, [c])
    assert p.choice != c and p.verdict != "positive"


@settings(max_examples=100, deadline=None)
@given(choices=choice_sets, data=st.data(),
       pre=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", max_size=3),
       post=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", max_size=3))
def test_part_of_a_longer_word_is_not_a_mention(choices, data, pre, post):
    c = data.draw(st.sampled_from(choices))
    word = pre + c + post
    if word in choices or not (pre or post):
        return
    p = parse_choice(f"the {word} is loud", choices, choices)
    assert p.choice is None and p.verdict == "unknown"


@settings(max_examples=100, deadline=None)
@given(choices=choice_sets, data=st.data(), lead=FILLER,
       sep=st.sampled_from([", then ", " and ", ". Later ", "; also ", " followed by "]))
def test_the_first_mention_wins(choices, data, lead, sep):
    a, b = data.draw(st.lists(st.sampled_from(choices), min_size=2, max_size=2, unique=True))
    p = parse_choice(" ".join(lead + [a]) + sep + b, choices, [b])
    assert (p.verdict, p.choice) == ("negative", a)


@settings(max_examples=100, deadline=None)
@given(rest=st.text(max_size=40), word=st.sampled_from(["yes", "no", "Yes", "NO"]))
def test_yes_no_reads_only_a_leading_whole_word(rest, word):
    p = parse_yes_no(word + rest)

    def wordy(c: str) -> bool:  # what regex \w matches
        return c.isalnum() or c == "_"

    if wordy(rest[:1]) or (rest[:1] in ("'", "\u2019", "\u2018") and wordy(rest[1:2].lower()[:1])):
        assert p.verdict == "unknown"
    else:
        assert p.verdict == ("positive" if word.lower() == "yes" else "negative")
