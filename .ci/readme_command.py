"""Print the command of a README section: the first ```bash block under the heading `## SECTION`, as written.

    python3 .ci/readme_command.py "Set up and test"

CI runs the README's commands through this, so that what it runs is what a reader copies.
"""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command(section: str, readme: Path = README) -> str:
    match = re.search(rf"^## {re.escape(section)}\n(.*?)^```bash\n(.*?)^```", readme.read_text(), re.M | re.S)
    if match is None or "\n## " in match.group(1):
        raise SystemExit(f"error: {readme} has no bash block in its section '## {section}'.")
    return match.group(2).strip()


if __name__ == "__main__":
    print(readme_command(sys.argv[1]))
