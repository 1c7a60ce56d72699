"""Study B's data: seeded short-answer tasks whose answers are computed by code.

Each record is a long-ish prompt (a paragraph of rules plus the input) followed by a short
answer — the shape of many real fine-tunes, and the one where choosing which ~10 % of the
tokens to back-propagate matters most: almost every token is prompt. The tasks are in the
spirit of the built-in demo set (tokenseek/data/builtin.py) but need several steps (order of
operations, sorting a dozen numbers, a filter then a count, a format conversion with rules),
which SmolLM2-135M does not get right zero-shot.

Records carry a ``task`` key besides instruction/input/output so accuracy can be broken down
by task; ``load_records`` ignores it. The instruction of a task is fixed text, every variable
part is in the input, written in a line-based ``Key: value`` form that a checker can parse.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tokenseek.errors import TokenSeekError

_WORDS = (
    "apple river candle mountain window garden silver rocket planet forest ladder pencil harbor "
    "meadow thunder violin lantern desert island castle bridge copper falcon glacier honey jacket "
    "kettle lemon marble needle orchard pepper quartz saddle tiger velvet walnut yogurt zebra anchor"
).split()
_MONTHS = ("January February March April May June July August September October November December").split()
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_ANSWER_NUMBER = "Reply with the number only, written with digits and no other words."
_ANSWER_LIST = "Reply with the list only: the items separated by a comma and a space, with no other words."


def _arithmetic(rng: random.Random) -> dict:
    # Two parenthesised pairs combined by a third operator: three steps with precedence.
    def pair() -> tuple[str, int]:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 9)
        value = a + b if op == "+" else a - b if op == "-" else a * b
        return f"({a} {op} {b})", value

    (left, lv), (right, rv) = pair(), pair()
    op = rng.choice("+-*")
    if op == "*":
        # Keep products readable: multiply a pair by a small plain number instead.
        rv = rng.randint(2, 9)
        right = str(rv)
    c = rng.randint(2, 20)
    tail_op = rng.choice("+-")
    value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv
    value = value + c if tail_op == "+" else value - c
    return {
        "instruction": (
            "Evaluate the arithmetic expression given in the input. Work out each part in parentheses first, "
            "then multiplication, then addition and subtraction from left to right. All numbers are whole "
            "numbers and the result may be negative. " + _ANSWER_NUMBER
        ),
        "input": f"Expression: {left} {op} {right} {tail_op} {c}",
        "output": str(value),
    }


def _sort_numbers(rng: random.Random) -> dict:
    nums = [rng.randint(1, 99) for _ in range(rng.randint(7, 10))]
    order = rng.choice(("ascending", "descending"))
    out = sorted(nums, reverse=order == "descending")
    return {
        "instruction": (
            "Sort the numbers given in the input in the order that the input names: ascending means from the "
            "smallest to the largest, descending means from the largest to the smallest. Keep numbers that "
            "appear more than once as many times as they appear. " + _ANSWER_LIST
        ),
        "input": f"Order: {order}\nNumbers: {', '.join(map(str, nums))}",
        "output": ", ".join(map(str, out)),
    }


def _reverse_words(rng: random.Random) -> dict:
    words = rng.sample(_WORDS, rng.randint(6, 9))
    return {
        "instruction": (
            "Write the words of the input list in reverse order, so that the last word comes first and the first "
            "word comes last. Do not change the spelling of any word and do not add or drop words. " + _ANSWER_LIST
        ),
        "input": f"Words: {', '.join(words)}",
        "output": ", ".join(reversed(words)),
    }


def _list_statistic(rng: random.Random) -> dict:
    nums = [rng.randint(1, 60) for _ in range(rng.randint(6, 9))]
    op = rng.choice(("largest", "smallest", "sum", "count above"))
    threshold = rng.randint(15, 45)
    if op == "largest":
        value = max(nums)
    elif op == "smallest":
        value = min(nums)
    elif op == "sum":
        value = sum(nums)
    else:
        value = sum(n > threshold for n in nums)
    line = f"Operation: count above {threshold}" if op == "count above" else f"Operation: {op}"
    return {
        "instruction": (
            "Apply the operation named in the input to the list of numbers. 'largest' and 'smallest' ask for one "
            "number of the list, 'sum' asks for the total of all numbers, and 'count above T' asks how many numbers "
            "are strictly greater than T. " + _ANSWER_NUMBER
        ),
        "input": f"{line}\nNumbers: {', '.join(map(str, nums))}",
        "output": str(value),
    }


def _count_word(rng: random.Random) -> dict:
    pool = rng.sample(_WORDS, 5)
    words = [rng.choice(pool) for _ in range(rng.randint(12, 18))]
    target = rng.choice(pool)
    return {
        "instruction": (
            "Count how many times the target word occurs in the list of words. Only whole words that are exactly "
            "the target count; the answer is 0 if it does not occur. " + _ANSWER_NUMBER
        ),
        "input": f"Target: {target}\nWords: {', '.join(words)}",
        "output": str(words.count(target)),
    }


def _filter_words(rng: random.Random) -> dict:
    words = rng.sample(_WORDS, rng.randint(8, 12))
    letter = rng.choice(sorted({w[0] for w in words}))  # never an empty answer
    return {
        "instruction": (
            "From the list of words, keep only the words that start with the letter given in the input, in the same "
            "order as they appear in the list, and drop all the others. " + _ANSWER_LIST
        ),
        "input": f"Letter: {letter}\nWords: {', '.join(words)}",
        "output": ", ".join(w for w in words if w[0] == letter),
    }


def to_roman(n: int) -> str:
    if not 1 <= n <= 3999:
        raise ValueError(n)
    out = []
    for value, symbol in ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while n >= value:
            out.append(symbol)
            n -= value
    return "".join(out)


def _roman(rng: random.Random) -> dict:
    n = rng.randint(1, 2999)
    return {
        "instruction": (
            "Write the number given in the input as a Roman numeral, using the symbols I, V, X, L, C, D and M and "
            "the subtractive forms IV, IX, XL, XC, CD and CM. Reply with the Roman numeral only."
        ),
        "input": f"Number: {n}",
        "output": to_roman(n),
    }


def _date_format(rng: random.Random) -> dict:
    year, month = rng.randint(1950, 2049), rng.randint(1, 12)
    day = rng.randint(1, _DAYS_IN_MONTH[month - 1])
    target = rng.choice(("DD/MM/YYYY", "Month D, YYYY", "MM-DD-YYYY"))
    if target == "DD/MM/YYYY":
        out = f"{day:02d}/{month:02d}/{year}"
    elif target == "MM-DD-YYYY":
        out = f"{month:02d}-{day:02d}-{year}"
    else:
        out = f"{_MONTHS[month - 1]} {day}, {year}"
    return {
        "instruction": (
            "Rewrite the date given in ISO format (YYYY-MM-DD) in the target format named in the input. DD and MM "
            "are two digits with a leading zero, D is the day without a leading zero, and Month is the English name "
            "of the month. Reply with the rewritten date only."
        ),
        "input": f"Date: {year}-{month:02d}-{day:02d}\nTarget format: {target}",
        "output": out,
    }


def _clock(rng: random.Random) -> dict:
    hour, minute = rng.randint(0, 23), rng.randint(0, 59)
    twelve = hour % 12 or 12
    return {
        "instruction": (
            "Convert the 24-hour clock time given in the input to the 12-hour clock. Midnight 00:MM becomes 12:MM AM "
            "and noon 12:MM becomes 12:MM PM; the hour has no leading zero and the minutes keep two digits. "
            "Reply with the time followed by AM or PM only."
        ),
        "input": f"Time: {hour:02d}:{minute:02d}",
        "output": f"{twelve}:{minute:02d} {'AM' if hour < 12 else 'PM'}",
    }


def _binary(rng: random.Random) -> dict:
    n = rng.randint(9, 1023)
    return {
        "instruction": (
            "The input is a whole number written in binary (base 2), most significant bit first. Convert it to "
            "decimal (base 10). " + _ANSWER_NUMBER
        ),
        "input": f"Binary: {n:b}",
        "output": str(n),
    }


def _snake_case(rng: random.Random) -> dict:
    words = rng.sample(_WORDS, rng.randint(2, 4))
    return {
        "instruction": (
            "Convert the phrase given in the input, written in Title Case, to a snake_case identifier: all letters "
            "lower case and the words joined by single underscores. Reply with the identifier only."
        ),
        "input": f"Phrase: {' '.join(w.capitalize() for w in words)}",
        "output": "_".join(words),
    }


# name -> generator of one record; the order is part of the data (changing it changes every seed's records).
TASKS: dict[str, Callable[[random.Random], dict]] = {
    "arithmetic": _arithmetic,
    "sort_numbers": _sort_numbers,
    "reverse_words": _reverse_words,
    "list_statistic": _list_statistic,
    "count_word": _count_word,
    "filter_words": _filter_words,
    "roman": _roman,
    "date_format": _date_format,
    "clock": _clock,
    "binary": _binary,
    "snake_case": _snake_case,
}


def _stream(seed: int, split: str):
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and Python versions.
    rng = random.Random(f"tokenseek-shortanswer:{seed}:{split}")
    names = list(TASKS)
    while True:
        name = rng.choice(names)
        yield {"task": name, **TASKS[name](rng)}


def shortanswer_splits(train: int = 2000, test: int = 500, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train records, test records)``, identical for a given (train, test, seed).

    The two splits come from separate seeded streams; no prompt repeats within or across them
    (the test set is not memorisable from training).
    """
    for name, value in (("train", train), ("test", test)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TokenSeekError(f"shortanswer: {name} must be a whole number >= 0, got {value!r}")
    seen: set[tuple[str, str]] = set()

    def take(n: int, split: str) -> list[dict]:
        out = []
        for tries, record in enumerate(_stream(seed, split)):
            if len(out) >= n:
                break
            if tries > 20 * n + 1000:  # the task space is large; only an absurd size gets here
                raise TokenSeekError(f"shortanswer: cannot draw {n} distinct {split} records; ask for fewer")
            key = (record["instruction"], record["input"])
            if key in seen:
                continue
            seen.add(key)
            out.append(record)
        return out

    return take(train, "train"), take(test, "test")
