"""The findings page: every leaderboard's tested claims as sentences, generated from numbers."""

from bench.results.findings.page import FINDINGS_FILE, findings_text, write_findings

__all__ = ["FINDINGS_FILE", "findings_text", "write_findings"]
