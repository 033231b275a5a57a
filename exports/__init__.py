"""Export jobs and formats (RSMF, EML, JSONL, CSV, transcript), signed
manifests, chain of custody and the offline export verifier."""
