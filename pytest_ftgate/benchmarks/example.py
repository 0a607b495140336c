"""``Example``: one benchmark item. Its own module so that subsets (``sampling``) and data
readers (``data``) can name it without importing the ``Benchmark`` class."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One benchmark item.

    ``id`` is stable and unique (the dataset's id, or a hash of the content when it has none);
    ``prompt`` is the user message; ``gold`` is the answer in canonical form ("A".."D",
    "positive"/"negative"/"neutral", or a label string); ``text`` is a short readable form for
    flip reports; ``stratum`` is what stratified subsets balance on; ``source`` says where the
    example came from, for error messages (``"data.jsonl:12"``; set by ``data.finish_ids``, "" when
    unknown; not part of equality).
    """

    id: str
    prompt: str
    gold: str
    text: str = ""
    stratum: str = ""
    source: str = field(default="", compare=False)
