"""Token seeking: score every token of an example and choose which ones to keep (paper §3.2.1)."""

from tokenseek.seeking.seek import SeekResult, seek
from tokenseek.seeking.select import STRATEGIES, combined_score, select_keep

__all__ = ["STRATEGIES", "SeekResult", "combined_score", "seek", "select_keep"]
