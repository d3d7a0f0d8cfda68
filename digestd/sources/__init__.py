"""Paper sources: the `Source` protocol, the one HTTP client, the Hugging Face and file sources, the reply parser."""

from digestd.sources.base import Source
from digestd.sources.file import FileSource
from digestd.sources.hf_json import parse_hf_daily
from digestd.sources.http import HttpGetter, make_client
from digestd.sources.huggingface import HuggingFaceSource

__all__ = [
    "FileSource",
    "HttpGetter",
    "HuggingFaceSource",
    "Source",
    "make_client",
    "parse_hf_daily",
]
