"""Paper sources: the `Source` protocol, the Hugging Face and file sources, the reply parser."""

from digestd.sources.base import Source
from digestd.sources.file import FileSource
from digestd.sources.hf_json import parse_hf_daily
from digestd.sources.huggingface import HuggingFaceSource, make_client

__all__ = ["FileSource", "HuggingFaceSource", "Source", "make_client", "parse_hf_daily"]
