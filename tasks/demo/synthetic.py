"""A built-in toy translation task: English-like sentences into German-like ones, offline.

The grammar is small but has what makes translation need attention rather than a word-by-word
lookup: the verb moves to the end (subject-object-verb order), articles agree with the noun's
gender and case (``der Hund`` as subject, ``den Hund`` as object), and adjectives inflect.
A model that learns it shows clean, crossing alignments in its cross-attention.
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["synthetic_pair", "write_synthetic_corpus"]

# English noun -> (German noun, gender).
NOUNS = {
    "dog": ("Hund", "m"), "cat": ("Katze", "f"), "child": ("Kind", "n"), "man": ("Mann", "m"),
    "woman": ("Frau", "f"), "horse": ("Pferd", "n"), "bird": ("Vogel", "m"), "girl": ("Mädchen", "n"),
    "teacher": ("Lehrer", "m"), "mouse": ("Maus", "f"), "boy": ("Junge", "m"), "cow": ("Kuh", "f"),
}  # fmt: skip
VERBS = {
    "sees": "sieht", "finds": "findet", "likes": "mag", "follows": "folgt", "calls": "ruft",
    "paints": "malt", "watches": "beobachtet", "feeds": "füttert", "hears": "hört", "knows": "kennt",
}  # fmt: skip
ADJECTIVES = {
    "big": "groß", "small": "klein", "old": "alt", "young": "jung", "red": "rot", "happy": "froh",
}  # fmt: skip
# Definite article by (gender, case); weak adjective ending after it.
ARTICLE = {("m", "nom"): "der", ("f", "nom"): "die", ("n", "nom"): "das",
           ("m", "acc"): "den", ("f", "acc"): "die", ("n", "acc"): "das"}  # fmt: skip
ENDING = {("m", "nom"): "e", ("f", "nom"): "e", ("n", "nom"): "e",
          ("m", "acc"): "en", ("f", "acc"): "e", ("n", "acc"): "e"}  # fmt: skip


def _noun_phrase(rng: random.Random, case: str) -> tuple[str, str]:
    noun = rng.choice(sorted(NOUNS))
    german, gender = NOUNS[noun]
    english, target = ["the"], [ARTICLE[gender, case]]
    if rng.random() < 0.5:
        adjective = rng.choice(sorted(ADJECTIVES))
        english.append(adjective)
        target.append(ADJECTIVES[adjective] + ENDING[gender, case])
    return " ".join([*english, noun]), " ".join([*target, german])


def synthetic_pair(rng: random.Random) -> tuple[str, str]:
    """One sentence pair: ``"the big dog sees the cat"`` -> ``"der große Hund die Katze sieht"``."""
    subject, subject_de = _noun_phrase(rng, "nom")
    obj, obj_de = _noun_phrase(rng, "acc")
    verb = rng.choice(sorted(VERBS))
    # Subject-object-verb: the German-like side puts the verb last.
    return f"{subject} {verb} {obj}", f"{subject_de} {obj_de} {VERBS[verb]}"


def write_synthetic_corpus(
    directory: Path, sizes: dict[str, int] | None = None, seed: int = 0
) -> dict[str, tuple[Path, Path]]:
    """Writes ``{split}.en`` / ``{split}.de`` line-aligned files into ``directory``.

    Args:
        directory: Where the files go (created if missing).
        sizes: Sentence pairs per split; ``train`` 6000, ``val`` 200, ``test`` 200 by default.
        seed: The corpus is a pure function of the seed.

    Returns:
        Split name -> (English file, German file).
    """
    sizes = sizes or {"train": 6000, "val": 200, "test": 200}
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {}
    for split, size in sizes.items():
        pairs = [synthetic_pair(rng) for _ in range(size)]
        en, de = directory / f"{split}.en", directory / f"{split}.de"
        en.write_text("".join(src + "\n" for src, _ in pairs), encoding="utf-8")
        de.write_text("".join(tgt + "\n" for _, tgt in pairs), encoding="utf-8")
        paths[split] = (en, de)
    return paths
