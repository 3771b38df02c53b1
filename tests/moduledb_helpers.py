"""Shared builders for the module-database tests: distinct, parseable functions."""

from __future__ import annotations

import random

from amr_async.moduledb import Module

_WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "amber",
    "basil",
    "cedar",
    "dune",
    "ember",
    "fjord",
    "grove",
    "heath",
    "iris",
    "jade",
    "kelp",
    "lotus",
    "maple",
    "nectar",
    "onyx",
    "pearl",
    "quartz",
    "raven",
    "sage",
    "thorn",
    "umber",
    "violet",
    "willow",
    "yarrow",
    "zinnia",
]

_OPS = ("+", "-", "*", "//", "%", "**")


def function_source(i: int) -> str:
    """A distinct function per `i`: different names, words, structure and constants."""
    rng = random.Random(i)
    name = "_".join(rng.sample(_WORDS, 3))
    args = rng.sample(_WORDS, rng.randint(1, 3))
    words = rng.sample(_WORDS, 4)
    body = [f'    """Compute the {words[0]} {words[1]} of {words[2]} and {words[3]}."""']
    acc = args[0]
    for j in range(rng.randint(1, 4)):
        op = rng.choice(_OPS)
        other = rng.choice(args)
        body.append(f"    {words[j % 4]}_{j} = {acc} {op} ({other} + {rng.randint(1, 999)})")
        acc = f"{words[j % 4]}_{j}"
    if rng.random() < 0.5:
        body.append(f"    if {acc} > {rng.randint(0, 50)}:")
        body.append(f"        return {acc} - {rng.randint(1, 9)}")
    body.append(f"    return {acc}")
    return f"def {name}({', '.join(args)}):\n" + "\n".join(body) + "\n"


def modules(start: int, count: int, **kwargs: object) -> list[Module]:
    """`count` distinct modules numbered from `start`."""
    return [Module(code=function_source(i), **kwargs) for i in range(start, start + count)]  # type: ignore[arg-type]
