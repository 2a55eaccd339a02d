"""What run_summarization.py uses beyond the data: generation metrics (and their styles), checks that a processor and
a model agree, the decoding settings, export of a complete Hub folder, its model card, the run record saved with
every checkpoint, and where a run writes (the result swapped in as a whole, the checkpoint folder). Imports modeling
code; never copied into a Hub folder."""
