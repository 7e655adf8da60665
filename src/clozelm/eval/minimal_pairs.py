"""clozelm's own minimal pairs, generated from templates and a small lexicon (BLiMP's idea, Warstadt et al.
2020): two sentences that differ in one place, one grammatical and one not.

The set is made by code, the same on every run and every machine: each phenomenon's sentences are every
combination of its template's words, and the PER_PHENOMENON kept are those whose sha256 (salted with the
phenomenon's name) sorts first. `python -m clozelm.eval.minimal_pairs OUT.jsonl` writes it out to read.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys

PER_PHENOMENON = 250

# (singular, plural) people: the subjects of every agreement template
PEOPLE = [("man", "men"), ("woman", "women"), ("child", "children"), ("king", "kings"), ("girl", "girls"),
          ("boy", "boys"), ("friend", "friends"), ("teacher", "teachers"), ("doctor", "doctors"),
          ("farmer", "farmers"), ("sister", "sisters"), ("brother", "brothers"), ("servant", "servants"),
          ("soldier", "soldiers"), ("lady", "ladies"), ("stranger", "strangers")]
# (third person singular, plural) present tense, intransitive; no plural form that is also a past tense ("The man
# read every day." is English)
VERBS = [("sleeps", "sleep"), ("walks", "walk"), ("laughs", "laugh"), ("waits", "wait"), ("sings", "sing"),
         ("speaks", "speak"), ("smiles", "smile"), ("works", "work"), ("prays", "pray"), ("listens", "listen"),
         ("writes", "write")]
ENDINGS = ["every day", "in the morning", "at night", "again", "here", "alone"]
# past tense transitive verbs inside a relative clause (no agreement to get wrong)
CLAUSE_VERBS = ["saw", "loved", "helped", "knew", "met", "followed", "called", "praised"]
PREPOSITIONS = ["near", "behind", "beside", "next to"]

NAMES_MALE = ["John", "James", "Robert", "William", "Thomas", "Charles", "George", "Henry"]
NAMES_FEMALE = ["Mary", "Elizabeth", "Anne", "Jane", "Emma", "Sarah", "Margaret", "Alice"]
PEOPLE_MALE = ["The man", "The king", "The boy", "The brother", "The father", "The soldier"]
PEOPLE_FEMALE = ["The woman", "The queen", "The girl", "The sister", "The mother", "The lady"]
PEOPLE_PLURAL = ["The men", "The women", "The children", "The soldiers", "The sisters", "The farmers"]

# (singular, plural) things for determiner-noun agreement, and the verbs and endings around them
THINGS = [("book", "books"), ("house", "houses"), ("horse", "horses"), ("letter", "letters"), ("ring", "rings"),
          ("picture", "pictures"), ("chair", "chairs"), ("box", "boxes"), ("apple", "apples"), ("coat", "coats"),
          ("song", "songs"), ("glass", "glasses")]
DETERMINERS = [("this", "these"), ("that", "those")]
OBJECT_VERBS = ["saw", "found", "liked", "took", "bought", "wanted", "sold", "kept"]
OBJECT_ENDINGS = ["yesterday", "last week", "in the town", "at the market", "again"]

REFLEXIVE_VERBS = ["hurt", "blamed", "praised", "washed", "helped", "saw", "surprised", "taught"]
REFLEXIVE_ENDINGS = ["", " again", " yesterday", " in the morning", " at last"]

# (past, past participle, objects) of irregular verbs whose two forms differ; left out are those whose past
# standard dictionaries still give as a participle or the other way round ("had forgot", "had hid", "had drank",
# "she sung a song"); archaic or dialect forms ("had spoke") count as errors, as in BLiMP
IRREGULAR = [("ate", "eaten", ["the bread", "an apple"]), ("wrote", "written", ["a letter", "a song"]),
             ("took", "taken", ["the money", "the horse"]), ("gave", "given", ["an answer", "a gift"]),
             ("spoke", "spoken", ["the truth", "a word"]), ("broke", "broken", ["the glass", "a window"]),
             ("chose", "chosen", ["a name", "the road"]), ("drove", "driven", ["the cart", "the cattle"]),
             ("knew", "known", ["the truth", "the answer"]),
             ("rode", "ridden", ["the horse", "a mule"]), ("began", "begun", ["the work", "a letter"]),
             ("stole", "stolen", ["the money", "a ring"]),
             ("shook", "shaken", ["the tree", "the box"]), ("threw", "thrown", ["the ball", "a stone"]),
             ("wore", "worn", ["the coat", "a ring"]), ("tore", "torn", ["the letter", "the paper"])]
SUBJECTS = NAMES_MALE[:4] + NAMES_FEMALE[:4] + ["The man", "The woman", "The boy", "The girl"]

ADJECTIVES = ["old", "young", "tall", "poor", "rich", "kind", "little", "good"]
PLACE_VERBS = [("sleeps", "sleep"), ("waits", "wait"), ("works", "work"), ("lives", "live"), ("sits", "sit"),
               ("stays", "stay")]
PLACES = ["house", "garden", "church", "room", "field", "kitchen"]
PLACE_PREPOSITIONS = ["in", "near", "behind"]


def _sentence(words: str) -> str:
    return words[0].upper() + words[1:] + "."


def _agreement_plain():
    for (sg, pl), (v_sg, v_pl), end in itertools.product(PEOPLE, VERBS, ENDINGS):
        yield _sentence(f"the {sg} {v_sg} {end}"), _sentence(f"the {sg} {v_pl} {end}")
        yield _sentence(f"the {pl} {v_pl} {end}"), _sentence(f"the {pl} {v_sg} {end}")


def _agreement_relative_clause():
    # The noun inside the clause has the other number: only the head noun says which verb form is right.
    for (sg1, pl1), (sg2, pl2), seen, (v_sg, v_pl), end in itertools.product(
            PEOPLE[:8], PEOPLE[8:], CLAUSE_VERBS, VERBS[:6], ENDINGS[:3]):
        yield (_sentence(f"the {sg1} that the {pl2} {seen} {v_sg} {end}"),
               _sentence(f"the {sg1} that the {pl2} {seen} {v_pl} {end}"))
        yield (_sentence(f"the {pl1} that the {sg2} {seen} {v_pl} {end}"),
               _sentence(f"the {pl1} that the {sg2} {seen} {v_sg} {end}"))


def _agreement_prepositional_phrase():
    for (sg1, pl1), (sg2, pl2), prep, (v_sg, v_pl), end in itertools.product(
            PEOPLE[:8], PEOPLE[8:], PREPOSITIONS, VERBS[:6], ENDINGS[:3]):
        yield (_sentence(f"the {sg1} {prep} the {pl2} {v_sg} {end}"),
               _sentence(f"the {sg1} {prep} the {pl2} {v_pl} {end}"))
        yield (_sentence(f"the {pl1} {prep} the {sg2} {v_pl} {end}"),
               _sentence(f"the {pl1} {prep} the {sg2} {v_sg} {end}"))


def _determiner_noun():
    # As BLiMP does, the determiner stays and the noun's number changes: "this book" / "this books".
    for name, verb, (d_sg, d_pl), (sg, pl), end in itertools.product(
            NAMES_MALE + NAMES_FEMALE, OBJECT_VERBS, DETERMINERS, THINGS, OBJECT_ENDINGS):
        yield f"{name} {verb} {d_sg} {sg} {end}.", f"{name} {verb} {d_sg} {pl} {end}."
        yield f"{name} {verb} {d_pl} {pl} {end}.", f"{name} {verb} {d_pl} {sg} {end}."


def _anaphor_agreement():
    for verb, end in itertools.product(REFLEXIVE_VERBS, REFLEXIVE_ENDINGS):
        for subject in NAMES_MALE + PEOPLE_MALE:
            yield f"{subject} {verb} himself{end}.", f"{subject} {verb} herself{end}."
        for subject in NAMES_FEMALE + PEOPLE_FEMALE:
            yield f"{subject} {verb} herself{end}.", f"{subject} {verb} himself{end}."
        for i, subject in enumerate(PEOPLE_PLURAL):
            wrong = "himself" if i % 2 == 0 else "herself"
            yield f"{subject} {verb} themselves{end}.", f"{subject} {verb} {wrong}{end}."


def _irregular_past_participle():
    for subject, (past, participle, objects), aux in itertools.product(SUBJECTS, IRREGULAR, ["has", "had"]):
        for thing in objects:
            # after has/had the participle; alone, the simple past
            yield f"{subject} {aux} {participle} {thing}.", f"{subject} {aux} {past} {thing}."
            yield f"{subject} {past} {thing} {aux == 'has' and 'today' or 'yesterday'}.", \
                f"{subject} {participle} {thing} {aux == 'has' and 'today' or 'yesterday'}."


def _word_order_swap():
    # "The old man sleeps in the house." with two neighbours swapped; every swap below is ungrammatical.
    for adjective, (sg, pl), (v_sg, v_pl), prep, place in itertools.product(
            ADJECTIVES, PEOPLE[:8], PLACE_VERBS, PLACE_PREPOSITIONS, PLACES):
        for noun, verb in ((sg, v_sg), (pl, v_pl)):
            words = ["the", adjective, noun, verb, prep, "the", place]
            for i in range(len(words) - 1):
                swapped = list(words)
                swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
                yield _sentence(" ".join(words)), _sentence(" ".join(swapped))


PHENOMENA = {
    "agreement_plain": _agreement_plain,
    "agreement_relative_clause": _agreement_relative_clause,
    "agreement_prepositional_phrase": _agreement_prepositional_phrase,
    "determiner_noun": _determiner_noun,
    "anaphor_agreement": _anaphor_agreement,
    "irregular_past_participle": _irregular_past_participle,
    "word_order_swap": _word_order_swap,
}


def _key(phenomenon: str, good: str, bad: str) -> str:
    return hashlib.sha256(f"{phenomenon}\0{good}\0{bad}".encode()).hexdigest()


def generate(per_phenomenon: int = PER_PHENOMENON) -> list[dict]:
    """[{"phenomenon", "good", "bad"}], `per_phenomenon` of each, in a fixed order."""
    out = []
    for phenomenon, make in PHENOMENA.items():
        pairs = sorted(set(make()), key=lambda pair: _key(phenomenon, *pair))
        out += [{"phenomenon": phenomenon, "good": good, "bad": bad} for good, bad in pairs[:per_phenomenon]]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in generate())
    if not argv or argv[0] == "-":
        sys.stdout.write(lines)
    else:
        from ..files import atomic_write_text
        atomic_write_text(argv[0], lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
