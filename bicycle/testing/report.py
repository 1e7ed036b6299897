"""Check outcomes of the conformance kit: one :class:`CheckResult` per check, gathered in a :class:`Report`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["passed", "failed", "skipped"]


class ConformanceError(AssertionError):
    """A component broke the contract; the message names the component and the check."""


class CheckSkipped(Exception):
    """A check that cannot run here (e.g. CUDA-graph capture without a GPU); the message says why."""


@dataclass(frozen=True)
class CheckResult:
    """``check`` run on ``subject`` (e.g. "backbone 'unet' + injector 'all'")."""

    check: str
    subject: str
    status: Status
    detail: str = ""

    def line(self) -> str:
        return f"{self.status.upper():7} {self.check} [{self.subject}]" + (f": {self.detail}" if self.detail else "")


@dataclass
class Report:
    """All results of a kit run. ``raise_for_failures()`` turns failures into one ConformanceError."""

    results: list[CheckResult] = field(default_factory=list)

    def run(self, check: str, subject: str, fn: Callable[[], str | None]) -> CheckResult:
        """Run ``fn`` (returns an optional detail, raises ConformanceError/CheckSkipped) and record it."""
        try:
            detail = fn() or ""
            result = CheckResult(check, subject, "passed", detail)
        except CheckSkipped as exc:
            result = CheckResult(check, subject, "skipped", str(exc))
        except ConformanceError as exc:
            result = CheckResult(check, subject, "failed", str(exc))
        except Exception as exc:  # a crash in the component is a failure of the check, named as such
            result = CheckResult(check, subject, "failed", f"raised {type(exc).__name__}: {exc}")
        self.results.append(result)
        return result

    def extend(self, other: Report) -> Report:
        self.results.extend(other.results)
        return self

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def skipped(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "skipped"]

    def checks(self, status: Status | None = None) -> list[str]:
        return [r.check for r in self.results if status is None or r.status == status]

    def raise_for_failures(self) -> Report:
        if self.failures:
            raise ConformanceError(f"{len(self.failures)} conformance check(s) failed:\n"
                                   + "\n".join(r.line() for r in self.failures))
        return self

    def __str__(self) -> str:
        return "\n".join(r.line() for r in self.results)
