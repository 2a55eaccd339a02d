"""What run_summarization.py uses beyond the data: generation metrics, checks that a processor and a model
agree, export of a complete Hub folder and its model card. Imports modeling code; never copied into a Hub folder."""
