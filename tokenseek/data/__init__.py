"""Training data: loading records (Alpaca, messages, prompt/completion, text), templates, tokenization, batching."""

from tokenseek.data.builtin import builtin_records
from tokenseek.data.collate import DitchingCollator
from tokenseek.data.formats import FORMATS
from tokenseek.data.records import load_records, parse_field_map
from tokenseek.data.templates import TEMPLATES, format_prompt
from tokenseek.data.tokenize import TokenizedData, tokenize_records

__all__ = [
    "TEMPLATES",
    "DitchingCollator",
    "FORMATS",
    "TokenizedData",
    "builtin_records",
    "format_prompt",
    "load_records",
    "parse_field_map",
    "tokenize_records",
]
