"""The fixed workload set for speculative decoding and the server-default benchmarks.

Five kinds of generation a notebook asks for, each a list of chat turns:
the user messages are fixed here; each assistant reply is what the model
generates (greedy), so a multi-turn workload carries its own earlier replies.
Kept in one committed file so that every run, on every machine, measures the
same requests.
"""

from __future__ import annotations

from dataclasses import dataclass

_CODE = '''```python
import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Reading:
    station: str
    day: str
    temperature: float
    rainfall: float


def load_readings(path: Path) -> list[Reading]:
    """Read the weather readings from a CSV file with a header row."""
    readings = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            readings.append(Reading(
                station=row["station"],
                day=row["day"],
                temperature=float(row["temperature"]),
                rainfall=float(row["rainfall"]),
            ))
    return readings


def average_temperature(readings: list[Reading], station: str) -> float:
    """The mean temperature of one station over all its days."""
    values = [r.temperature for r in readings if r.station == station]
    if not values:
        raise ValueError(f"no readings for station {station}")
    return sum(values) / len(values)


def wettest_day(readings: list[Reading], station: str) -> str:
    """The day with the most rain at one station."""
    best = max((r for r in readings if r.station == station), key=lambda r: r.rainfall)
    return best.day


def report(readings: list[Reading]) -> str:
    """One line per station: its mean temperature and its wettest day."""
    stations = sorted({r.station for r in readings})
    lines = []
    for station in stations:
        mean = average_temperature(readings, station)
        lines.append(f"{station}: {mean:.1f} C, wettest on {wettest_day(readings, station)}")
    return "\\n".join(lines)
```'''


@dataclass(frozen=True)
class Workload:
    """One benchmark workload: its name, the user turns, and the tokens allowed per reply."""

    name: str
    turns: tuple[str, ...]
    max_tokens: int


WORKLOADS: tuple[Workload, ...] = (
    Workload("copy/edit (rename in a code block)", (
        "Rewrite this code with the function `average_temperature` renamed to `mean_temperature` "
        "everywhere. Reply with the whole code block and nothing else.\n\n" + _CODE,
    ), 600),
    Workload("structured (list, JSON records, table)", (
        "List the twelve months of the year, one per line, each with its number of days.",
        "Now give the same twelve months as a JSON array of objects with the keys \"name\", "
        "\"number\" and \"days\".",
        "Now as a Markdown table with the columns Month, Number and Days.",
    ), 250),
    Workload("free prose (a short story)", (
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    ), 250),
    Workload("multi-turn chat", (
        "I am planning a vegetable garden. Which vegetables are easy for a beginner?",
        "Which of those grow well in partial shade?",
        "How often should I water them in summer?",
        "Summarise your advice as a checklist.",
    ), 120),
    Workload("code generation", (
        "Write a Python function that parses a date in the form YYYY-MM-DD, checks that it is a valid "
        "date, and returns the day of the week. Include a docstring and three examples.",
    ), 300),
)
"""The workload set, in the order each session runs it."""
