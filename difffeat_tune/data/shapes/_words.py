"""The grammar of "shapes" captions, looked up once per generation: plurals and indefinite articles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from difffeat_tune.data.shapes._config import ShapesConfig


@dataclass(frozen=True)
class _Words:
    """Grammar looked up once per generation: plurals and indefinite articles."""

    plural: Mapping[str, str]
    article: Mapping[str, str]

    @classmethod
    def build(cls, cfg: ShapesConfig) -> _Words:
        import inflect

        engine = inflect.engine()
        nouns = ({w for syn in cfg.synonyms for w in syn} | set(cfg.categories) | set(cfg.distractors)
                 | set(cfg.vague_nouns))
        heads = nouns | {name for name, _ in cfg.palette} | {"faint"}
        return cls(
            plural={w: engine.plural_noun(w) for w in sorted(nouns)},
            article={w: engine.a(w).split(" ", 1)[0] for w in sorted(heads)},
        )

    def a(self, phrase: str) -> str:
        first = phrase.split(" ", 1)[0]
        return f"{self.article.get(first, 'a')} {phrase}"
