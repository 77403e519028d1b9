"""Evaluation: the protocol (clean → attack ensemble → N fresh re-evaluations), reports, and the commands built on
it (`fastpurify demo`, `fastpurify compare`, `fastpurify sweep`)."""
