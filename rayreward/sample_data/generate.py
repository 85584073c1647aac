"""Writes the bundled sample preference data (``train.jsonl`` and ``eval.jsonl``).

The task is learnable by a tiny model in a couple of minutes: the chosen answer is a
polite, on-topic reply; the rejected one is rude, a flat refusal, or a polite reply
about a different topic. Each row carries a ``margin`` saying how clearly the chosen
answer wins (rude < refusal < off-topic in difficulty). The texts were written for
rayreward; nothing here is copied from another data set.

Run ``python -m rayreward.sample_data.generate`` to rewrite the files; the output is
deterministic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = {
    "bread": ("bake bread at home", "Mix flour, water, salt and yeast, let the dough rise for an hour, shape it and bake it at 220 C for about 35 minutes."),
    "bike": ("fix a flat bike tire", "Take the wheel off, lever the tire open, find the hole, patch or replace the tube, then pump it back to the pressure written on the tire."),
    "sleep": ("sleep better", "Keep the same bedtime every day, avoid screens and coffee late in the evening, and keep the bedroom dark and cool."),
    "python": ("read a file in Python", "Open it with a with-block, for example with open(path) as f: text = f.read(), so the file is closed for you."),
    "garden": ("grow tomatoes", "Plant them in full sun after the last frost, water the soil deeply twice a week and tie the stems to a stake as they grow."),
    "budget": ("make a monthly budget", "List your income, write down fixed costs first, set a limit for food and fun, and put a fixed share into savings on payday."),
    "run": ("start running", "Begin with short runs mixed with walking three times a week, and add a few minutes each week so your legs can adapt."),
    "coffee": ("make good coffee", "Use freshly ground beans, about 60 grams per litre of water just off the boil, and brew for four minutes."),
    "study": ("study for an exam", "Spread the work over several days, test yourself instead of rereading, and sleep well the night before."),
    "plant": ("keep a houseplant alive", "Give it bright indirect light, water only when the top of the soil is dry, and make sure the pot drains."),
    "email": ("write a polite email", "Start with a greeting, say what you need in the first two sentences, thank the reader and sign with your name."),
    "rice": ("cook rice", "Rinse the rice, use about one and a half cups of water per cup, simmer covered for fifteen minutes and let it rest."),
    "paint": ("paint a room", "Clean the walls, tape the edges, use a primer on stains, then roll two thin coats and let each one dry."),
    "dog": ("train a puppy to sit", "Hold a treat above its nose, move it back so the puppy sits, say sit, and reward it right away; repeat in short sessions."),
    "sql": ("count rows in SQL", "Use SELECT COUNT(*) FROM table_name; add a WHERE clause to count only the rows that match a condition."),
    "stress": ("handle stress at work", "Break big tasks into small steps, take short breaks, talk to your manager early about load, and protect your time off."),
    "soup": ("make vegetable soup", "Soften onion and garlic in oil, add chopped vegetables and stock, simmer for twenty minutes and season to taste."),
    "git": ("undo the last git commit", "Run git reset --soft HEAD~1 to undo the commit but keep the changes staged, or git revert to undo a pushed commit."),
    "spanish": ("learn Spanish words", "Practise a few new words every day with flash cards, say them out loud and use them in short sentences."),
    "moving": ("pack for a move", "Start early, pack one room at a time, label every box with its room and contents, and keep essentials in one bag."),
}
ASKS = [
    "How do I {t}?",
    "Can you tell me how to {t}?",
    "What is the best way to {t}?",
    "I want to {t}. Any advice?",
    "Please explain how to {t}.",
    "Could you help me {t}?",
]
OPENERS = ["Sure, happy to help!", "Of course.", "Good question.", "Glad you asked.", "Certainly."]
CLOSERS = ["Good luck!", "Hope this helps.", "Let me know if you have more questions.", "Have fun with it.", ""]
RUDE = [
    "Figure it out yourself, it is not my problem.",
    "That is a stupid question and you should know this already.",
    "Why would I waste my time on you? Go away.",
    "Ugh, just search for it instead of bothering me.",
    "Nobody cares, stop asking silly things.",
]
REFUSALS = [
    "I cannot help with that.",
    "Sorry, I will not answer this.",
    "I do not know and I am not going to look into it.",
]
# How clearly the chosen answer should win over each kind of rejected answer.
MARGINS = {"rude": 2.0, "refusal": 1.0, "off_topic": 0.5}


def _pair(rng: random.Random) -> dict:
    key = rng.choice(sorted(TOPICS))
    task, answer = TOPICS[key]
    prompt = rng.choice(ASKS).format(t=task)
    chosen = " ".join(s for s in (rng.choice(OPENERS), answer, rng.choice(CLOSERS)) if s)
    kind = rng.choice(sorted(MARGINS))
    if kind == "rude":
        rejected = rng.choice(RUDE)
    elif kind == "refusal":
        rejected = rng.choice(REFUSALS)
    else:
        other = rng.choice([k for k in sorted(TOPICS) if k != key])
        rejected = " ".join(s for s in (rng.choice(OPENERS), TOPICS[other][1], rng.choice(CLOSERS)) if s)
    return {
        "prompt": f"Human: {prompt}\nAssistant:",
        "chosen": " " + chosen,
        "rejected": " " + rejected,
        "margin": MARGINS[kind],
        "kind": kind,
    }


def write(folder: Path, n_train: int = 1600, n_eval: int = 400, seed: int = 0) -> None:
    rng = random.Random(seed)
    for name, n in (("train.jsonl", n_train), ("eval.jsonl", n_eval)):
        with open(folder / name, "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps(_pair(rng)) + "\n")


if __name__ == "__main__":
    write(Path(__file__).parent)
