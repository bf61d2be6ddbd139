"""A tenant runbook whose findings come from a prepared report, not from this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fixture_runbook(report: Path, marker: Path) -> dict[str, Any]:
    """A tenant runbook replacing ``disk-full``: its diagnostic reads a prepared df report,
    so the finding (and the remediation it asks for) do not depend on this machine's disks."""
    return {
        "id": "disk-full",
        "title": "Disk full (prepared report)",
        "summary": "A filesystem ran out of space.",
        "symptoms": ["disk is full", "No space left on device"],
        "keywords": ["disk", "full"],
        "parameters": {
            "report": {"description": "df output", "default": str(report)},
            "marker": {"description": "what the fix creates", "default": str(marker)},
        },
        "diagnostics": [
            {
                "name": "Usage per filesystem",
                "command": "cat {report}",
                "explain": "Use% near 100 is the full one.",
                "findings": [
                    {
                        "pattern": r"(?P<pct>\d+)%\s+(?P<mount>/\S*)$",
                        "group": "pct",
                        "above": 90,
                        "message": "{mount} is {pct}% full",
                        "severity": "critical",
                        "remediation": "Free the space",
                    }
                ],
            },
            {"name": "Uptime", "command": "uptime", "explain": "For context."},
        ],
        "remediations": [
            {
                "name": "Free the space",
                "command": "touch {marker}",
                "risk_note": "Creates a file.",
                "when": "A filesystem is over 90% full.",
            }
        ],
        "verify": [{"name": "Free space again", "command": "cat {report}", "explain": "Lower."}],
    }
