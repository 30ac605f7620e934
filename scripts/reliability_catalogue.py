#!/usr/bin/env python3
"""Print, check or rewrite the bad-input catalogue in docs/reliability.md from tests/test_bad_inputs.py.

    python scripts/reliability_catalogue.py           # print the generated section
    python scripts/reliability_catalogue.py --write   # replace the section in docs/reliability.md
    python scripts/reliability_catalogue.py --check   # exit 1 when the doc and the cases differ

The cases are the single source: add or change a case in tests/test_bad_inputs.py, then --write.
tests/test_bad_inputs.py::test_the_catalogue_in_the_docs_matches_the_cases fails until you do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="rewrite the section in docs/reliability.md")
    group.add_argument("--check", action="store_true", help="exit 1 when docs/reliability.md is out of date")
    args = parser.parse_args()

    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    import test_bad_inputs as cases

    section = cases.render_section()
    if not (args.write or args.check):
        print(section)
        return 0
    text = cases.DOC.read_text()
    start, end = text.index(cases.TABLE_START), text.index(cases.TABLE_END) + len(cases.TABLE_END)
    current = text[start:end]
    if args.check:
        if current != section:
            print(f"{cases.DOC.relative_to(ROOT)} is out of date: run {Path(__file__).name} --write", file=sys.stderr)
            return 1
        return 0
    cases.DOC.write_text(text[:start] + section + text[end:])
    print(f"wrote {len(cases.CASES)} cases to {cases.DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
