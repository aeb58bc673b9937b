"""The corpus layer: `ingest` sources into Parquet shards + manifest.json, and
the `Corpus` handle (DuckDB over local or s3:// shards) the RLM engine uses."""
from rlm_ray.corpus.duck import CorpusQueryError
from rlm_ray.corpus.handle import Corpus
from rlm_ray.corpus.ingest import ingest

__all__ = ["Corpus", "CorpusQueryError", "ingest"]
