"""Container ids and docker-style random names ("eager_turing")."""

from __future__ import annotations

import re
import secrets

_LEFT = [
    "admiring", "agitated", "amazing", "bold", "brave", "busy", "calm", "charming", "clever", "cool",
    "dazzling", "eager", "ecstatic", "elastic", "epic", "festive", "focused", "gallant", "gifted",
    "happy", "hopeful", "jolly", "keen", "kind", "laughing", "loving", "lucid", "magical", "modest",
    "nifty", "nostalgic", "peaceful", "pensive", "quirky", "relaxed", "serene", "sharp", "stoic",
    "sweet", "tender", "trusting", "upbeat", "vibrant", "wizardly", "youthful", "zealous",
]
_RIGHT = [
    "albattani", "babbage", "bardeen", "bell", "bohr", "curie", "darwin", "dijkstra", "einstein",
    "euler", "fermat", "feynman", "galileo", "gauss", "hamilton", "hopper", "hypatia", "kepler",
    "knuth", "lamarr", "lovelace", "maxwell", "mccarthy", "meitner", "newton", "noether", "pascal",
    "pike", "ritchie", "shannon", "tesla", "thompson", "torvalds", "turing", "wozniak", "yalow",
]

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def new_id() -> str:
    return secrets.token_hex(32)


def random_name() -> str:
    return f"{secrets.choice(_LEFT)}_{secrets.choice(_RIGHT)}"


MAX_NAME = 128


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name)) and len(name) <= MAX_NAME
