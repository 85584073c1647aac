"""What the checks found: every problem at once (``PreflightError``), and notes to print."""

from __future__ import annotations

from dataclasses import dataclass, field


class PreflightError(ValueError):
    """Inputs with problems; ``problems`` lists every one, one line each."""

    def __init__(self, problems: list[str], what: str = "the inputs"):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in {what}:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class Findings:
    """What preflight found: problems stop the command, notes are printed and it goes on."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def raise_if_any(self, what: str) -> None:
        if self.problems:
            raise PreflightError(self.problems, what)
