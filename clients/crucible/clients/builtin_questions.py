"""A dozen easy built-in multiple-choice questions (MMLU format) for `crucible attack --builtin` and the demo.

They let the attack loop run with no data folder; the demo scores them first and attacks those the target answers right.
"""

from __future__ import annotations

from crucible.clients.attack import MCQ

#: A dozen easy general-knowledge questions in MMLU format (answers are indexes into the options, spread over the
#: letters). The demo scores them all first and attacks those the configured target answers right, so it has
#: something to attack whatever the target; no data folder is needed.
ATTACK_SAMPLES = [
    MCQ("builtin/0", "high_school_geography", "What is the capital city of France?", ("Berlin", "Madrid", "Paris", "Rome"), 2),
    MCQ("builtin/1", "elementary_mathematics", "What is the result of 7 multiplied by 8?", ("54", "56", "58", "64"), 1),
    MCQ("builtin/2", "astronomy", "Which planet is known as the Red Planet?", ("Mars", "Venus", "Jupiter", "Saturn"), 0),
    MCQ(
        "builtin/3",
        "high_school_biology",
        "Which organ pumps blood through the human body?",
        ("The lungs", "The liver", "The heart", "The kidneys"),
        2,
    ),
    MCQ("builtin/4", "high_school_chemistry", "What is the chemical formula of water?", ("CO2", "NaCl", "H2O", "O2"), 2),
    MCQ("builtin/5", "elementary_mathematics", "How many days are there in a week?", ("Five", "Six", "Seven", "Eight"), 2),
    MCQ(
        "builtin/6",
        "high_school_geography",
        "Which is the largest ocean on Earth?",
        ("The Atlantic Ocean", "The Pacific Ocean", "The Indian Ocean", "The Arctic Ocean"),
        1,
    ),
    MCQ(
        "builtin/7",
        "high_school_physics",
        "At what temperature in degrees Celsius does pure water freeze at sea level?",
        ("0", "10", "50", "100"),
        0,
    ),
    MCQ(
        "builtin/8",
        "high_school_biology",
        "Which animal is known as the king of the jungle?",
        ("The elephant", "The tiger", "The zebra", "The lion"),
        3,
    ),
    MCQ(
        "builtin/9",
        "high_school_biology",
        "What do bees collect from flowers to make honey?",
        ("Nectar", "Leaves", "Bark", "Seeds"),
        0,
    ),
    MCQ(
        "builtin/10",
        "high_school_geography",
        "On which continent is Egypt located?",
        ("Asia", "Africa", "Europe", "South America"),
        1,
    ),
    MCQ("builtin/11", "elementary_mathematics", "How many sides does a triangle have?", ("Two", "Three", "Four", "Five"), 1),
]
