"""Training data: loading records (Alpaca, messages, prompt/completion, text), templates, tokenization, batching."""

from tokenseek.data.builtin import builtin_records
from tokenseek.data.collate import DitchingCollator
from tokenseek.data.formats import FORMATS
from tokenseek.data.generators import GENERATORS, generate_splits
from tokenseek.data.records import load_records, parse_field_map, records_from
from tokenseek.data.templates import TEMPLATES, format_prompt
from tokenseek.data.tokenize import TokenizedData, prompt_ids, tokenize_records, tokenize_with

__all__ = [
    "GENERATORS",
    "TEMPLATES",
    "DitchingCollator",
    "FORMATS",
    "TokenizedData",
    "builtin_records",
    "format_prompt",
    "generate_splits",
    "load_records",
    "parse_field_map",
    "prompt_ids",
    "records_from",
    "tokenize_records",
    "tokenize_with",
]
