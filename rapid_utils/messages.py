"""One-line summaries of long error messages, for progress lines and recorded reasons."""

from __future__ import annotations


def gist(text: str, empty: str = "no reason given") -> str:
    """The first sentence of an error or skip reason (`empty` when there is none).

    Whole sentences, not a fixed number of characters: a cut mid-sentence reads as a wrong
    instruction. The full text stays where it was recorded (skipped.json, the notebook).
    """
    return text.strip().splitlines()[0].split(". ")[0] if text.strip() else empty
