"""Harness: one experiment end to end (:mod:`.experiment`), the paper's tables (:mod:`.reproduce`,
:mod:`.tables`, :mod:`.plots`) recorded in SQLite (:mod:`.store`) with provenance (:mod:`.provenance`), the
leaderboard (:mod:`.submissions`, :mod:`.leaderboard`) and lm-evaluation-harness (:mod:`.lm_eval_cli`)."""
