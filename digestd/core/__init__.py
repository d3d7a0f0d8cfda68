"""The pure core: plain values (papers, rules, subscribers, matches), errors, text folding, periods,
merging records of one paper, redaction, LaTeX as text. No I/O, no clock, no globals."""
