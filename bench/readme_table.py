"""Regenerate the README's benchmark table from bench/results/*.json (each has date, machine, headline).

python bench/readme_table.py            # rewrites the table between the markers in README.md
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def table() -> str:
    rows = ["| benchmark | result | measured | machine |", "|---|---|---|---|"]
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        record = json.loads(path.read_text())
        machine = record.get("machine", "")
        if isinstance(machine, dict):
            machine = ", ".join(str(value) for value in machine.values() if value)
        headline = record.get("headline", "(no headline recorded)")
        rows.append(f"| `bench/{path.stem}.py` | {headline} | {record.get('date', '')} | {machine} |")
    if len(rows) == 2:
        rows.append("| — | nothing measured yet | | |")
    return "\n".join(rows)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    before, rest = text.split(START)
    _, after = rest.split(END)
    readme.write_text(f"{before}{START}\n{table()}\n{END}{after}")
    print(table())


if __name__ == "__main__":
    main()
