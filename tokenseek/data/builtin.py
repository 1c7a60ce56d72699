"""A small built-in instruction dataset with checkable answers, for the offline demo.

Generated deterministically (no download), so a fresh machine can run
``tokenseek train`` with no arguments and see the loss fall.
"""

from __future__ import annotations

import random

_WORDS = (
    "apple river candle mountain window garden silver rocket planet forest "
    "ladder pencil harbor meadow thunder violin lantern desert island castle"
).split()


def _task(rng: random.Random) -> dict:
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        return {"instruction": "Add the two numbers.", "input": f"{a} and {b}", "output": str(a + b)}
    if kind == 1:
        word = rng.choice(_WORDS)
        return {"instruction": "Reverse the letters of the word.", "input": word, "output": word[::-1]}
    if kind == 2:
        words = rng.sample(_WORDS, 4)
        return {"instruction": "Sort these words alphabetically.", "input": ", ".join(words), "output": ", ".join(sorted(words))}
    if kind == 3:
        word = rng.choice(_WORDS)
        return {"instruction": f"How many letters are in the word '{word}'?", "input": "", "output": str(len(word))}
    if kind == 4:
        nums = [rng.randint(1, 50) for _ in range(5)]
        return {"instruction": "Give the largest number in the list.", "input": " ".join(map(str, nums)), "output": str(max(nums))}
    word = rng.choice(_WORDS)
    return {"instruction": "Write the word in capital letters.", "input": word, "output": word.upper()}


def builtin_records(n: int = 400, seed: int = 0) -> list[dict]:
    """``n`` Alpaca-style records (instruction, input, output), identical for a given seed."""
    rng = random.Random(seed)
    return [_task(rng) for _ in range(n)]
