"""`rlm-ray bench paper`: the RLM paper's (arXiv 2512.24601) Table 1 benchmarks
from the files their publishers ship, run through the batch layer, scored by
each benchmark's own rule, printed beside the paper's published rows."""
